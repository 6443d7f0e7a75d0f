import { spawn, type ChildProcess } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { Injectable, Logger } from '@nestjs/common';
import { parseUffdWorkerStats, type UffdWorkerStats } from './uffd-worker.stats';
import { UffdWorkerStartError, UffdWorkerStatsError } from './uffd.errors';

export interface UffdWorkerStartOptions {
  /** A template snapshot dir or a checkpoint dir (manifest.json); the worker verifies it before it listens. */
  readonly snapshotDir: string;
  /** Where the worker listens for Firecracker's handshake (mem_backend.backend_path). */
  readonly socketPath: string;
  /** Where the worker answers each connection with one stats JSON line. */
  readonly statsSocketPath: string;
  /** Pages to copy ahead of faults, in memory.index run format. */
  readonly prefetchPath?: string;
  /** Until `ready` (the worker hashes every file it serves from first); default 30 s. */
  readonly timeoutMs?: number;
}

export interface UffdWorkerExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** One running kiln-uffd-worker serving one VM's guest memory. */
export interface UffdWorkerProcess {
  readonly pid: number;
  readonly socketPath: string;
  readonly statsSocketPath: string;
  /** Settles (never rejects) when the worker has exited and its output is drained. */
  readonly exited: Promise<UffdWorkerExit>;
  /** The most recent stats read from this worker (by stats(), a scrape, or stop()); undefined before the first. */
  readonly lastStats: UffdWorkerStats | undefined;
  /** Reads one stats line from the stats socket. Rejects with UffdWorkerStatsError. */
  stats(timeoutMs?: number): Promise<UffdWorkerStats>;
  /** SIGTERM, SIGKILL after 2 s; resolves once it has exited and both of its sockets are removed. */
  stop(): Promise<void>;
}

export const UFFD_WORKER_DEFAULT_START_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 2_000;
const STATS_TIMEOUT_MS = 2_000;
/** What the worker prefixes its one refusal line with. */
const REASON_PREFIX = 'kiln-uffd-worker: ';
/** Bounds what a misbehaving worker can make the agent buffer. */
const MAX_STDERR_BYTES = 16 * 1024;

type ExitListener = (worker: UffdWorkerProcess, exit: UffdWorkerExit) => void;

/**
 * Starts and tracks the host's UFFD workers (one per VM restored with a Uffd memory backend). Workers are plain
 * child processes of the agent: nothing here re-adopts a worker after an agent restart.
 */
@Injectable()
export class UffdWorkerSupervisor {
  private readonly logger = new Logger(UffdWorkerSupervisor.name);
  private readonly liveWorkers = new Set<UffdWorkerProcess>();
  private readonly exitListeners: ExitListener[] = [];

  constructor(readonly binaryPath: string) {}

  /** The workers started here that have not exited yet. */
  workers(): readonly UffdWorkerProcess[] {
    return [...this.liveWorkers];
  }

  /**
   * Calls `listener` once per worker when it has exited, in the same step that removes it from workers() and with
   * its lastStats final, e.g. to fold its counters into totals. Its sockets are removed right after.
   */
  onWorkerExit(listener: ExitListener): void {
    this.exitListeners.push(listener);
  }

  /** Spawns a worker; resolves once it printed `ready` (its socket is bound), rejects with UffdWorkerStartError. */
  start(options: UffdWorkerStartOptions): Promise<UffdWorkerProcess> {
    const args = ['--socket', options.socketPath, '--snapshot', options.snapshotDir, '--stats-socket', options.statsSocketPath];
    if (options.prefetchPath !== undefined) args.push('--prefetch', options.prefetchPath);
    const timeoutMs = options.timeoutMs ?? UFFD_WORKER_DEFAULT_START_TIMEOUT_MS;

    let child: ChildProcess;
    try {
      child = spawn(this.binaryPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (error) {
      return Promise.reject(new UffdWorkerStartError(`cannot spawn UFFD worker ${this.binaryPath}: ${(error as Error).message}`));
    }
    const worker = new SpawnedUffdWorker(child, options.socketPath, options.statsSocketPath);

    return new Promise<UffdWorkerProcess>((resolve, reject) => {
      let settled = false;
      const fail = (error: UffdWorkerStartError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(error);
      };
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, timeoutMs);

      child.once('error', (error) => {
        // spawn failures (ENOENT, EACCES) arrive here and no 'exit' follows a failed spawn.
        fail(new UffdWorkerStartError(`cannot spawn UFFD worker ${this.binaryPath}: ${error.message}`));
      });
      worker.onReady(() => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.track(worker);
        resolve(worker);
      });
      void worker.exited.then(async (exit) => {
        if (settled) return;
        // It may have bound its sockets already; a worker that was never handed out must not leave them behind.
        await worker.removeSockets().catch(() => undefined);
        if (timedOut) {
          fail(new UffdWorkerStartError(`UFFD worker did not become ready within ${timeoutMs} ms (killed)`, worker.refusalReason(), exit.code));
          return;
        }
        const reason = worker.refusalReason();
        const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
        fail(new UffdWorkerStartError(`UFFD worker ${how} before ready${reason ? `: ${reason}` : ''}`, reason, exit.code));
      });
    });
  }

  private track(worker: SpawnedUffdWorker): void {
    this.liveWorkers.add(worker);
    void worker.exited.then(async (exit) => {
      // Untracked and reported in one step: totals folded in by a listener never miss a worker nor count it twice.
      this.liveWorkers.delete(worker);
      for (const listener of this.exitListeners) listener(worker, exit);
      if (exit.code !== 0) {
        this.logger.warn(`UFFD worker ${worker.pid} exited (code ${exit.code}, signal ${exit.signal})${worker.refusalReason() ? `: ${worker.refusalReason()}` : ''}`);
      }
      await worker.removeSockets().catch((error: Error) => this.logger.warn(`UFFD worker ${worker.pid}: cannot remove its sockets: ${error.message}`));
    });
  }
}

/** The process behind UffdWorkerProcess: its output parsing, stats reads and stop. */
class SpawnedUffdWorker implements UffdWorkerProcess {
  readonly pid: number;
  readonly exited: Promise<UffdWorkerExit>;
  private latestStats: UffdWorkerStats | undefined;
  /** Which stats() read latestStats came from (Infinity: the final line the worker printed as it exited). */
  private latestStatsRead = 0;
  private statsReadsStarted = 0;
  private stderrText = '';
  private readyListener: (() => void) | undefined;
  private ready = false;
  private stopping: Promise<void> | undefined;

  constructor(
    private readonly child: ChildProcess,
    readonly socketPath: string,
    readonly statsSocketPath: string,
  ) {
    this.pid = child.pid ?? -1;
    // 'close' (not 'exit'): the last stdout/stderr bytes are read before anyone sees the worker as gone.
    this.exited = new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
    let stdoutBuffer = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      stdoutBuffer += chunk;
      let newline: number;
      while ((newline = stdoutBuffer.indexOf('\n')) >= 0) {
        this.onStdoutLine(stdoutBuffer.slice(0, newline).trim());
        stdoutBuffer = stdoutBuffer.slice(newline + 1);
      }
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      if (this.stderrText.length < MAX_STDERR_BYTES) this.stderrText += chunk.slice(0, MAX_STDERR_BYTES - this.stderrText.length);
    });
  }

  get lastStats(): UffdWorkerStats | undefined {
    return this.latestStats;
  }

  onReady(listener: () => void): void {
    this.readyListener = listener;
  }

  /** The worker's `kiln-uffd-worker: <reason>` line (the last one), else its last non-empty stderr line. */
  refusalReason(): string | undefined {
    const lines = this.stderrText.split('\n').map((line) => line.trim()).filter((line) => line.length > 0);
    const reasonLines = lines.filter((line) => line.startsWith(REASON_PREFIX));
    const line = reasonLines.at(-1) ?? lines.at(-1);
    return line?.startsWith(REASON_PREFIX) ? line.slice(REASON_PREFIX.length) : line;
  }

  async stats(timeoutMs = STATS_TIMEOUT_MS): Promise<UffdWorkerStats> {
    const readNumber = ++this.statsReadsStarted;
    const stats = parseUffdWorkerStats(await readStatsLine(this.statsSocketPath, timeoutMs));
    // Reads can overlap (a scrape and stop()); an older one finishing last must not move lastStats backwards.
    if (readNumber > this.latestStatsRead) {
      this.latestStatsRead = readNumber;
      this.latestStats = stats;
    }
    return stats;
  }

  stop(): Promise<void> {
    this.stopping ??= this.terminate();
    return this.stopping;
  }

  async removeSockets(): Promise<void> {
    await Promise.all([rm(this.socketPath, { force: true }), rm(this.statsSocketPath, { force: true })]);
  }

  private async terminate(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      // Last counters before it goes, so totals folded in from it are complete; a worker that cannot answer
      // (stuck, never got a peer) keeps the stats it had.
      await this.stats(500).catch(() => undefined);
      this.child.kill('SIGTERM');
      const killTimer = setTimeout(() => this.child.kill('SIGKILL'), STOP_GRACE_MS);
      await this.exited;
      clearTimeout(killTimer);
    } else {
      await this.exited;
    }
    await this.removeSockets();
  }

  private onStdoutLine(line: string): void {
    if (line === 'ready' && !this.ready) {
      this.ready = true;
      this.readyListener?.();
      return;
    }
    // A worker may print its final counters as a stats line when its peer goes away: the most complete numbers.
    if (line.startsWith('{')) {
      try {
        this.latestStats = parseUffdWorkerStats(line);
        this.latestStatsRead = Infinity;
      } catch {
        // Not a stats line: nothing else is expected on stdout, and it must not break the worker's bookkeeping.
      }
    }
  }
}

function readStatsLine(socketPath: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new UffdWorkerStatsError(`UFFD worker stats socket ${socketPath} did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (text.length > 64 * 1024) socket.destroy(new Error('stats line longer than 64 KiB'));
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(new UffdWorkerStatsError(`cannot read UFFD worker stats from ${socketPath}: ${error.message}`));
    });
    socket.once('end', () => {
      clearTimeout(timer);
      const line = text.split('\n')[0].trim();
      if (line.length === 0) reject(new UffdWorkerStatsError(`UFFD worker stats socket ${socketPath} closed without a line`));
      else resolve(line);
    });
  });
}
