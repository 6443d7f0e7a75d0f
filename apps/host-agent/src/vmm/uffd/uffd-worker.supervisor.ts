import { spawn, type ChildProcess } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { Injectable, Logger } from '@nestjs/common';
import { processStartTicks } from '../vmm-identities';
import { delay, watchProcessLiveness } from '../vmm-process';
import { parseUffdWorkerStats, type UffdWorkerStats } from './uffd-worker.stats';
import { UffdWorkerAdoptError, UffdWorkerStartError, UffdWorkerStatsError } from './uffd.errors';

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
  /** Set for an adopted worker: not this process's child, so how it ended cannot be read (code and signal are null). */
  readonly statusUnknown?: true;
}

/** What a later agent process needs to adopt a running worker (the Firecracker driver keeps it in the VM's vm.json). */
export interface UffdWorkerRecord {
  readonly pid: number;
  /** Field 22 of /proc/<pid>/stat when it was recorded: the worker, not an unrelated process that reused its pid. */
  readonly processStartTicks: string;
  readonly socketPath: string;
  readonly statsSocketPath: string;
}

/** One running kiln-uffd-worker serving one VM's guest memory. */
export interface UffdWorkerProcess {
  readonly pid: number;
  readonly socketPath: string;
  readonly statsSocketPath: string;
  /** Settles (never rejects) when the worker has exited and its output is drained (an adopted one: once its pid is seen gone). */
  readonly exited: Promise<UffdWorkerExit>;
  /** The most recent stats read from this worker (by stats(), a scrape, or stop()); undefined before the first. */
  readonly lastStats: UffdWorkerStats | undefined;
  /** Reads one stats line from the stats socket. Rejects with UffdWorkerStatsError. */
  stats(timeoutMs?: number): Promise<UffdWorkerStats>;
  /** SIGTERM, SIGKILL after 2 s; resolves once it has exited and both of its sockets are removed. */
  stop(): Promise<void>;
  /** Removes its socket and stats socket (the worker removes them itself unless it was SIGKILLed). */
  removeSockets(): Promise<void>;
}

export const UFFD_WORKER_DEFAULT_START_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 2_000;
const STATS_TIMEOUT_MS = 2_000;
/** How often stop() checks whether an adopted worker (no exit event: not our child) is gone yet. */
const ADOPTED_STOP_POLL_MS = 20;
/** What the worker prefixes its one refusal line with. */
const REASON_PREFIX = 'kiln-uffd-worker: ';
/** Bounds what a misbehaving worker can make the agent buffer. */
const MAX_STDERR_BYTES = 16 * 1024;

type ExitListener = (worker: UffdWorkerProcess, exit: UffdWorkerExit) => void;

/**
 * Starts and tracks the host's UFFD workers (one per VM restored with a Uffd memory backend). A worker runs in a
 * session of its own and outlives the agent like the VMM it serves; a restarted agent takes it over with adopt().
 */
@Injectable()
export class UffdWorkerSupervisor {
  private readonly logger = new Logger(UffdWorkerSupervisor.name);
  private readonly liveWorkers = new Set<TrackedUffdWorker>();
  private readonly exitListeners: ExitListener[] = [];

  constructor(readonly binaryPath: string) {}

  /** The workers started or adopted here that have not exited yet. */
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
      /*
       * A session of its own (detached), like the VMM: an agent restart, or a signal to the agent's process group,
       * must not take guest memory away from a running VM (its next fault on a page not yet served would block that
       * vCPU forever). stdout/stderr stay pipes to this process, the simplest way to read `ready` and a refusal line
       * while the agent lives. Once the agent is gone they have no reader: the worker ignores SIGPIPE (main.c), so
       * its few later writes (an error line, the final stats line) fail with EPIPE and it carries on or exits as it
       * would have; those lines are lost, and a restarted agent reads the counters from the stats socket instead.
       */
      child = spawn(this.binaryPath, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (error) {
      return Promise.reject(new UffdWorkerStartError(`cannot spawn UFFD worker ${this.binaryPath}: ${(error as Error).message}`));
    }
    // A worker serving a VM must not keep the agent's event loop alive, as a detached VMM does not; its output is
    // still read while the loop runs.
    child.unref();
    for (const pipe of [child.stdout, child.stderr]) (pipe as Socket | null)?.unref();
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

  /**
   * Takes over a worker a previous agent process started (recorded with its VM): tracked like one started here, its
   * exit noticed by polling its pid's start ticks, reported with {statusUnknown: true}. Throws UffdWorkerAdoptError
   * when that process is gone. A worker this supervisor already tracks is returned as it is.
   */
  async adopt(record: UffdWorkerRecord): Promise<UffdWorkerProcess> {
    const tracked = [...this.liveWorkers].find((worker) => worker.pid === record.pid && worker.socketPath === record.socketPath);
    if (tracked) return tracked;
    if (!record.processStartTicks) {
      throw new UffdWorkerAdoptError(`UFFD worker ${record.pid} (${record.socketPath}) was recorded without its start ticks: it cannot be told from another process`);
    }
    const ticks = await processStartTicks(record.pid);
    if (ticks !== record.processStartTicks) {
      const now = ticks === undefined ? 'is gone' : 'now belongs to another process';
      throw new UffdWorkerAdoptError(`UFFD worker ${record.pid} (${record.socketPath}) is no longer running: the pid ${now}`);
    }
    const worker = new AdoptedUffdWorker(record);
    this.track(worker);
    return worker;
  }

  private track(worker: TrackedUffdWorker): void {
    this.liveWorkers.add(worker);
    void worker.exited.then(async (exit) => {
      // Untracked and reported in one step: totals folded in by a listener never miss a worker nor count it twice.
      this.liveWorkers.delete(worker);
      for (const listener of this.exitListeners) listener(worker, exit);
      if (exit.statusUnknown) {
        this.logger.log(`adopted UFFD worker ${worker.pid} is gone (its exit status is not known to this process)`);
      } else if (exit.code !== 0) {
        this.logger.warn(`UFFD worker ${worker.pid} exited (code ${exit.code}, signal ${exit.signal})${worker.refusalReason() ? `: ${worker.refusalReason()}` : ''}`);
      }
      await worker.removeSockets().catch((error: Error) => this.logger.warn(`UFFD worker ${worker.pid}: cannot remove its sockets: ${error.message}`));
    });
  }
}

/** What spawned and adopted workers share: stats reads, stop() once, socket removal. */
abstract class TrackedUffdWorker implements UffdWorkerProcess {
  abstract readonly pid: number;
  abstract readonly exited: Promise<UffdWorkerExit>;
  private latestStats: UffdWorkerStats | undefined;
  /** Which stats() read latestStats came from (Infinity: the final line the worker printed as it exited). */
  private latestStatsRead = 0;
  private statsReadsStarted = 0;
  private stopping: Promise<void> | undefined;

  constructor(
    readonly socketPath: string,
    readonly statsSocketPath: string,
  ) {}

  get lastStats(): UffdWorkerStats | undefined {
    return this.latestStats;
  }

  /** The worker's own words on why it ended, when this process could read them. */
  refusalReason(): string | undefined {
    return undefined;
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

  /** The counters the worker printed as it exited: newer than any stats() read. */
  protected recordFinalStats(stats: UffdWorkerStats): void {
    this.latestStats = stats;
    this.latestStatsRead = Infinity;
  }

  protected abstract terminate(): Promise<void>;
}

/** A worker this process spawned: its output parsing and stop through its child process. */
class SpawnedUffdWorker extends TrackedUffdWorker {
  readonly pid: number;
  readonly exited: Promise<UffdWorkerExit>;
  private stderrText = '';
  private readyListener: (() => void) | undefined;
  private ready = false;

  constructor(
    private readonly child: ChildProcess,
    socketPath: string,
    statsSocketPath: string,
  ) {
    super(socketPath, statsSocketPath);
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

  onReady(listener: () => void): void {
    this.readyListener = listener;
  }

  /** The worker's `kiln-uffd-worker: <reason>` line (the last one), else its last non-empty stderr line. */
  override refusalReason(): string | undefined {
    const lines = this.stderrText.split('\n').map((line) => line.trim()).filter((line) => line.length > 0);
    const reasonLines = lines.filter((line) => line.startsWith(REASON_PREFIX));
    const line = reasonLines.at(-1) ?? lines.at(-1);
    return line?.startsWith(REASON_PREFIX) ? line.slice(REASON_PREFIX.length) : line;
  }

  protected async terminate(): Promise<void> {
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
        this.recordFinalStats(parseUffdWorkerStats(line));
      } catch {
        // Not a stats line: nothing else is expected on stdout, and it must not break the worker's bookkeeping.
      }
    }
  }
}

/**
 * A worker an earlier agent process started, running on in its own session. Not our child: no exit event and no exit
 * status, so its pid is polled for the start ticks it was recorded with, and each signal is sent only after checking
 * the pid is still that process.
 */
class AdoptedUffdWorker extends TrackedUffdWorker {
  readonly pid: number;
  readonly exited: Promise<UffdWorkerExit>;
  private readonly startTicks: string;
  private resolveExited!: (exit: UffdWorkerExit) => void;
  private gone = false;
  private readonly livenessTimer: NodeJS.Timeout;

  constructor(record: UffdWorkerRecord) {
    super(record.socketPath, record.statsSocketPath);
    this.pid = record.pid;
    this.startTicks = record.processStartTicks;
    this.exited = new Promise((resolve) => (this.resolveExited = resolve));
    this.livenessTimer = watchProcessLiveness(this.pid, this.startTicks, () => this.markGone());
  }

  protected async terminate(): Promise<void> {
    if (await this.isRunning()) {
      // Last counters before it goes, as for a spawned worker: totals folded in from it are then complete.
      await this.stats(500).catch(() => undefined);
      if (await this.signalIfRunning('SIGTERM')) {
        const killAt = Date.now() + STOP_GRACE_MS;
        let killSent = false;
        while (await this.isRunning()) {
          if (!killSent && Date.now() >= killAt) {
            killSent = true;
            await this.signalIfRunning('SIGKILL');
          }
          await delay(ADOPTED_STOP_POLL_MS);
        }
      }
    }
    this.markGone();
    await this.removeSockets();
  }

  private async isRunning(): Promise<boolean> {
    return !this.gone && (await processStartTicks(this.pid)) === this.startTicks;
  }

  /** False when the pid is no longer the adopted worker (nothing was signalled). */
  private async signalIfRunning(signal: NodeJS.Signals): Promise<boolean> {
    // Checked right before the kill: a pid reused by another process must never be signalled. The check and the
    // kill are two steps (Node has no pidfd), so only the worker exiting and its pid being reused in between, within
    // microseconds, could slip through.
    if (!(await this.isRunning())) return false;
    try {
      process.kill(this.pid, signal);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ESRCH') return false;
      throw error;
    }
  }

  private markGone(): void {
    if (this.gone) return;
    this.gone = true;
    clearInterval(this.livenessTimer);
    this.resolveExited({ code: null, signal: null, statusUnknown: true });
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
