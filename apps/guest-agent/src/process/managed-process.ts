import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants as fsConstants, openSync } from 'node:fs';
import * as pty from 'node-pty';
import type { PipeCalls } from '../runtime/guest-kernel';
import { EventQueue } from '../streaming/event-queue';
import { exitStatusOf, type ExitStatus } from './exit-status';
import { OutputPipe } from './output-pipe';
import { launchPlan } from './user-launch';

export type ProcessOutput =
  | { kind: 'stdout' | 'stderr' | 'pty'; data: Buffer }
  | { kind: 'end'; status: ExitStatus };

export interface ProcessSpec {
  cmd: string;
  args: string[];
  /** Only what the caller asked for, reported back by List; the full environment is in `env`. */
  envs: Record<string, string>;
  env: Record<string, string>;
  cwd: string;
  uid: number;
  gid: number;
  /** All group ids of the user, primary first. */
  groups: readonly number[];
  /** The agent protected itself from the OOM killer; the command must not inherit that. */
  resetOomScore: boolean;
  tag?: string;
  stdin: boolean;
  pty?: { cols: number; rows: number };
}

export class ProcessInputError extends Error {}

/** A subscriber holding more than this pauses the process's output until it catches up. */
const SUBSCRIBER_HIGH_WATER_BYTES = 1 << 20;
const SUBSCRIBER_LOW_WATER_BYTES = 256 << 10;

/**
 * One process started by the agent, pipe- or PTY-backed. Output fans out to every subscriber (the Start stream and
 * any Connect streams) in order; a slow subscriber pauses the source, and with no subscriber output is dropped so a
 * background process never blocks on a client that went away.
 */
export abstract class ManagedProcess {
  abstract readonly pid: number;
  private readonly subscribers = new Set<EventQueue<ProcessOutput>>();
  private paused = false;
  private endStatus: ExitStatus | undefined;
  private readonly endListeners: Array<(status: ExitStatus) => void> = [];

  constructor(readonly spec: ProcessSpec) {}

  get tag(): string | undefined {
    return this.spec.tag;
  }

  get isPty(): boolean {
    return this.spec.pty !== undefined;
  }

  get hasEnded(): boolean {
    return this.endStatus !== undefined;
  }

  /**
   * envd semantics for Start's Connect-Timeout-Ms: the command is killed when the deadline passes (0 = none).
   * The timer is monotonic, so a snapshot pause does not fire it early.
   */
  killAfter(ms: number): void {
    if (!(ms > 0) || this.hasEnded) return;
    const timer = setTimeout(() => this.signal('SIGKILL'), ms);
    timer.unref();
    this.onEnd(() => clearTimeout(timer));
  }

  onEnd(listener: (status: ExitStatus) => void): void {
    if (this.endStatus) listener(this.endStatus);
    else this.endListeners.push(listener);
  }

  subscribe(): EventQueue<ProcessOutput> {
    const queue: EventQueue<ProcessOutput> = new EventQueue<ProcessOutput>(SUBSCRIBER_LOW_WATER_BYTES, () =>
      this.updateFlow(),
    );
    if (this.endStatus) {
      queue.push({ kind: 'end', status: this.endStatus });
      queue.close();
    } else {
      this.subscribers.add(queue);
    }
    return queue;
  }

  unsubscribe(queue: EventQueue<ProcessOutput>): void {
    this.subscribers.delete(queue);
    queue.discard();
    this.updateFlow();
  }

  abstract writeInput(data: Buffer, target: 'stdin' | 'pty'): Promise<void>;
  abstract closeStdin(): void;
  abstract resize(cols: number, rows: number): void;

  /** Signals the whole process group, so a shell's children die with it; falls back to the pid alone. */
  signal(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, signal);
    } catch {
      try {
        process.kill(this.pid, signal);
      } catch {
        // Already gone: the end event is on its way.
      }
    }
  }

  protected abstract pauseSource(): void;
  protected abstract resumeSource(): void;

  protected emitOutput(kind: 'stdout' | 'stderr' | 'pty', data: Buffer): void {
    for (const queue of this.subscribers) queue.push({ kind, data }, data.length);
    this.updateFlow();
  }

  protected emitEnd(status: ExitStatus): void {
    if (this.endStatus) return;
    this.endStatus = status;
    for (const queue of this.subscribers) {
      queue.push({ kind: 'end', status });
      queue.close();
    }
    this.subscribers.clear();
    for (const listener of this.endListeners.splice(0)) listener(status);
  }

  private updateFlow(): void {
    let behind = false;
    for (const queue of this.subscribers) if (queue.pendingBytes > SUBSCRIBER_HIGH_WATER_BYTES) behind = true;
    if (behind && !this.paused) {
      this.paused = true;
      this.pauseSource();
    } else if (!behind && this.paused) {
      const caughtUp = [...this.subscribers].every((q) => q.pendingBytes <= SUBSCRIBER_LOW_WATER_BYTES);
      if (caughtUp) {
        this.paused = false;
        this.resumeSource();
      }
    }
  }
}

/**
 * When the owed output cannot be counted exactly (see OutputPipe), a pipe is settled after the command's exit once
 * no data has arrived on it for this long (the reader not held back by backpressure)...
 */
const PIPE_FALLBACK_QUIET_MS = 100;
/** ...or at the latest this long after the exit, so a background process that keeps writing cannot hold it open. */
const PIPE_FALLBACK_MAX_MS = 1000;

/**
 * A process with plain pipes: stdout and stderr kept apart, stdin piped only when asked for.
 *
 * It ends when the process itself exits, as in envd, not when every holder of its pipes has let go: `sleep 8 & echo
 * started` ends at once. Everything it wrote before exiting still arrives, in order, before the end event (see
 * OutputPipe); only a background process's later output is dropped.
 */
export class PipeProcess extends ManagedProcess {
  readonly pid: number;
  private readonly child: ChildProcess;
  private readonly outputs: OutputPipe[] = [];
  private exitStatus: ExitStatus | undefined;
  private sourcePaused = false;

  private constructor(
    spec: ProcessSpec,
    child: ChildProcess,
    private readonly pipes: PipeCalls | undefined,
  ) {
    super(spec);
    this.child = child;
    this.pid = child.pid as number;
    for (const [stream, kind] of [
      [child.stdout, 'stdout'],
      [child.stderr, 'stderr'],
    ] as const) {
      if (!stream) continue;
      this.outputs.push(new OutputPipe(stream, (data) => this.emitOutput(kind, data), () => this.endIfDrained()));
    }
    child.stdin?.on('error', () => {
      // EPIPE after the process closed its stdin: surfaced to the caller by writeInput's callback.
    });
    // 'exit' fires once the process is reaped; Node's 'close' would also wait for EOF on every pipe.
    child.on('exit', (code, signal) => this.commandExited(exitStatusOf(code, signal)));
  }

  static async spawn(spec: ProcessSpec, pipes: PipeCalls | undefined): Promise<PipeProcess> {
    const plan = launchPlan(spec.cmd, spec.args, spec);
    const child = spawn(plan.file, plan.args, {
      cwd: spec.cwd,
      env: spec.env,
      uid: plan.uid,
      gid: plan.gid,
      stdio: [spec.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      // Own session and process group: signals from the agent's terminal do not reach it, and SendSignal can
      // address the whole group.
      detached: true,
    });
    if (child.pid === undefined) {
      const error = await new Promise<Error>((resolve) => child.once('error', resolve));
      throw error;
    }
    child.on('error', () => {
      // Errors after a successful spawn (a failed kill) carry no information the exit event does not.
    });
    return new PipeProcess(spec, child, pipes);
  }

  async writeInput(data: Buffer, target: 'stdin' | 'pty'): Promise<void> {
    if (target === 'pty') throw new ProcessInputError('process was not started with a PTY');
    const stdin = this.child.stdin;
    if (!stdin) throw new ProcessInputError('stdin is not enabled for this process');
    if (stdin.writableEnded || stdin.destroyed) throw new ProcessInputError('stdin is closed');
    await new Promise<void>((resolve, reject) =>
      stdin.write(data, (err) => (err ? reject(new ProcessInputError(`error writing to stdin: ${err.message}`)) : resolve())),
    );
  }

  /** Closing a stdin that is absent or already closed is a no-op, as in envd. */
  closeStdin(): void {
    this.child.stdin?.end();
  }

  resize(): void {
    throw new ProcessInputError('process was not started with a PTY');
  }

  protected pauseSource(): void {
    this.sourcePaused = true;
    for (const output of this.outputs) output.pause();
  }

  protected resumeSource(): void {
    this.sourcePaused = false;
    for (const output of this.outputs) output.resume();
  }

  private commandExited(status: ExitStatus): void {
    this.exitStatus = status;
    // Every pipe is counted (no short-circuit): a pipe that can be counted exactly should be.
    const counted = this.outputs.map((output) => output.countOwedAtExit(this.pipes));
    if (!counted.every(Boolean)) this.settleByQuietPeriod(Date.now());
    this.endIfDrained();
  }

  private endIfDrained(): void {
    if (this.exitStatus && this.outputs.every((output) => output.isSettled)) this.emitEnd(this.exitStatus);
  }

  /** The fallback when the owed bytes could not be counted (no native addon): quiet period, with a ceiling. */
  private settleByQuietPeriod(exitedAt: number): void {
    // Judged from setImmediate, i.e. after an I/O poll phase, so output a stalled event loop has not read yet is
    // read before the decision.
    const check = () =>
      setImmediate(() => {
        if (this.hasEnded) return;
        const now = Date.now();
        if (!this.sourcePaused) {
          for (const output of this.outputs) {
            if (output.quietForMs(now) >= PIPE_FALLBACK_QUIET_MS || now - exitedAt >= PIPE_FALLBACK_MAX_MS) output.settle();
          }
        }
        if (!this.hasEnded) setTimeout(check, PIPE_FALLBACK_QUIET_MS).unref();
      });
    check();
  }
}

/** node-pty's private fields this module relies on (node-pty 1.1, pinned by the bundle). */
interface NodePtyInternals {
  ptsName?: string;
  /** The terminal's master side, which the agent reads. */
  fd?: number;
  _socket?: { destroy: (...args: unknown[]) => unknown; readableLength?: number };
}

/** After the command exits, how often the terminal is checked for having been read empty. */
const PTY_DRAIN_CHECK_MS = 10;
/**
 * Without the native addon the terminal's content cannot be measured: output is considered fully read once none has
 * arrived for this long after the exit. Generous: on a loaded host the event loop can be late to read it.
 */
const PTY_FALLBACK_QUIET_MS = 100;
/**
 * A background process that keeps writing to the terminal would never let it be read empty: the end comes at the
 * latest this long after the exit (time spent held back by a slow subscriber not counted), long enough to read the
 * little a terminal can hold (its buffers take some 68 KB before the writer blocks).
 */
const PTY_DRAIN_MAX_MS = 1000;
/** How often a PTY's command is checked for having exited (one kill(pid, 0) per tick). */
const PTY_EXIT_POLL_MS = 20;

/**
 * A process on a pseudo-terminal: one combined output stream, resizable, input goes through the line discipline.
 *
 * Output at exit: once the last fd of a terminal's slave side closes, Linux discards what the master side had not
 * read yet, so plain node-pty loses the tail of a burst (measured here: the last ~4 KB of `seq 1 100000` in about a
 * third of runs). The agent therefore keeps a slave fd of its own open, so the buffer stays readable after the
 * command exits. node-pty would end the terminal by destroying its socket after a 200 ms grace timer; instead the
 * agent notices the exit itself (the pid is gone once node-pty has reaped it) and destroys the socket once the
 * terminal has been read empty: nothing buffered by the socket, nothing left on the master (poll + FIONREAD, see
 * native/pipe_fd.c), the reader not held back by backpressure. A background process that still holds the terminal
 * does not delay that unless it keeps writing, and then only up to PTY_DRAIN_MAX_MS. The end event follows.
 */
export class PtyProcess extends ManagedProcess {
  readonly pid: number;
  private readonly terminal: pty.IPty;
  private heldSlaveFd: number | undefined;
  private sourcePaused = false;
  private lastOutputAt = 0;

  private constructor(
    spec: ProcessSpec,
    terminal: pty.IPty,
    private readonly pipes: PipeCalls | undefined,
  ) {
    super(spec);
    this.terminal = terminal;
    this.pid = terminal.pid;
    this.holdSlaveOpen(terminal as unknown as NodePtyInternals);
    terminal.onData((data) => {
      this.lastOutputAt = Date.now();
      this.emitOutput('pty', typeof data === 'string' ? Buffer.from(data) : data);
    });
    terminal.onExit(({ exitCode, signal }) => {
      this.releaseSlave();
      this.emitEnd(exitStatusOf(exitCode, signal || null));
    });
  }

  static spawn(spec: ProcessSpec, pipes: PipeCalls | undefined): PtyProcess {
    const size = spec.pty ?? { cols: 80, rows: 24 };
    const plan = launchPlan(spec.cmd, spec.args, spec);
    const terminal = pty.spawn(plan.file, plan.args, {
      name: spec.env.TERM ?? 'xterm-256color',
      cols: Math.max(1, size.cols),
      rows: Math.max(1, size.rows),
      cwd: spec.cwd,
      env: spec.env,
      uid: plan.uid,
      gid: plan.gid,
      // Raw bytes: decoding here would corrupt multi-byte characters split across reads.
      encoding: null,
    });
    return new PtyProcess(spec, terminal, pipes);
  }

  async writeInput(data: Buffer): Promise<void> {
    this.terminal.write(data);
  }

  closeStdin(): void {
    throw new ProcessInputError('cannot close stdin of a PTY process; send EOT (Ctrl-D) instead');
  }

  resize(cols: number, rows: number): void {
    if (!(cols > 0 && rows > 0)) throw new ProcessInputError('PTY size must have positive cols and rows');
    this.terminal.resize(cols, rows);
  }

  protected pauseSource(): void {
    this.sourcePaused = true;
    this.terminal.pause();
  }

  protected resumeSource(): void {
    this.sourcePaused = false;
    this.terminal.resume();
  }

  private holdSlaveOpen(internals: NodePtyInternals): void {
    const socket = internals._socket;
    if (!internals.ptsName || !socket || typeof socket.destroy !== 'function') return;
    try {
      // libuv opens with O_CLOEXEC, so later children do not inherit this fd.
      this.heldSlaveFd = openSync(internals.ptsName, fsConstants.O_RDWR | fsConstants.O_NOCTTY);
    } catch {
      return; // Without the held fd node-pty's own behaviour applies.
    }
    const destroy = socket.destroy.bind(socket);
    let draining = false;
    const destroyWhenDrained = () => {
      if (draining) return;
      draining = true;
      const exitNoticedAt = Date.now();
      let lastCheckAt = exitNoticedAt;
      let heldBackMs = 0;
      // Judged from setImmediate, i.e. after an I/O poll phase: had the event loop been stalled, output waiting in
      // the terminal is read before the decision, not after it.
      const finish = () =>
        setImmediate(() => {
          const now = Date.now();
          if (this.sourcePaused) heldBackMs += now - lastCheckAt;
          lastCheckAt = now;
          if (this.sourcePaused) {
            setTimeout(finish, PTY_DRAIN_CHECK_MS);
            return;
          }
          if (this.terminalReadEmpty(internals, exitNoticedAt, now) || now - exitNoticedAt - heldBackMs >= PTY_DRAIN_MAX_MS) {
            destroy();
            return;
          }
          setTimeout(finish, this.pipes ? PTY_DRAIN_CHECK_MS : PTY_FALLBACK_QUIET_MS);
        });
      finish();
    };
    // node-pty's grace timer lands here too; it no longer cuts the output short.
    socket.destroy = () => {
      destroyWhenDrained();
      return socket;
    };
    const exitWatch = setInterval(() => {
      try {
        process.kill(this.pid, 0);
      } catch {
        clearInterval(exitWatch);
        destroyWhenDrained();
      }
    }, PTY_EXIT_POLL_MS);
    exitWatch.unref();
    this.onEnd(() => clearInterval(exitWatch));
  }

  /** Whether everything written to the terminal so far has been read and delivered. */
  private terminalReadEmpty(internals: NodePtyInternals, exitNoticedAt: number, now: number): boolean {
    if ((internals._socket?.readableLength ?? 0) > 0) return false;
    if (this.pipes && typeof internals.fd === 'number' && internals.fd >= 0) {
      try {
        return this.pipes.pipeBytesAvailable(internals.fd) === 0;
      } catch {
        // The master is already closed: nothing more can be read from it.
        return true;
      }
    }
    return now - Math.max(this.lastOutputAt, exitNoticedAt) >= PTY_FALLBACK_QUIET_MS;
  }

  private releaseSlave(): void {
    if (this.heldSlaveFd === undefined) return;
    closeSync(this.heldSlaveFd);
    this.heldSlaveFd = undefined;
  }
}
