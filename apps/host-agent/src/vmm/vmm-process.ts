import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import type { VmExit, VmSpec, VmStartTimings } from './vmm-driver';
import { VmNotRunningError } from './vmm.errors';
import { setPriority } from 'node:os';
import { processStartTicks } from './vmm-identities';

/**
 * What every VMM driver does to the VMM process itself, whichever VMM it is: how it is started in the background,
 * killed, watched when adopted, and how its state files are written. Shared by the QEMU and Firecracker drivers.
 */

export const DEFAULT_START_TIMEOUT_MS = 30_000;
/** The niceness of a VMM started in the background (VmStartOptions.background). */
export const BACKGROUND_NICE = 19;
/** How often an adopted VMM (not our child: no exit event) is checked for being gone. */
export const ADOPTED_LIVENESS_POLL_MS = 500;
/** How long a command whose control socket closed waits for the VMM process to be gone (it unmaps guest RAM). */
export const EXIT_AFTER_CONTROL_CLOSED_MS = 1_000;

/** Kills the VMM's process group (it leads one), or the process alone when it has none. */
export function killGroupOrProcess(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
    process.kill(pid, 'SIGKILL');
  }
}

/** Normal CPU priority for every thread of `pid`: niceness is per thread on Linux, and each inherited the background value. */
export async function setProcessForeground(pid: number): Promise<void> {
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  for (const tid of tasks) {
    try {
      setPriority(Number(tid), 0);
    } catch (error) {
      // A thread that ended since the listing (libuv reports it as a SystemError with info.code).
      const code = (error as { info?: { code?: string } }).info?.code ?? (error as NodeJS.ErrnoException).code;
      if (code !== 'ESRCH') throw error;
    }
  }
}

/** Calls `onGone` once `pid` is no longer the process that started at `startTicks` (for VMMs that are not our children). */
export function watchProcessLiveness(pid: number, startTicks: string, onGone: () => void): NodeJS.Timeout {
  const timer = setInterval(() => {
    void processStartTicks(pid).then((ticks) => {
      if (ticks !== startTicks) onGone();
    });
  }, ADOPTED_LIVENESS_POLL_MS);
  timer.unref();
  return timer;
}

export async function writeFileAtomic(path: string, content: string): Promise<void> {
  const partial = `${path}.partial`;
  await writeFile(partial, content);
  await rename(partial, path);
}

/** The end of a VMM's log, for an error message; empty when there is none. */
export async function fileTail(path: string, maxBytes = 2000): Promise<string> {
  try {
    return (await readFile(path, 'utf8')).slice(-maxBytes).trim();
  } catch {
    return '';
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The part of a VmHandle that is about the VMM process, not the VMM: its exit (settled once, from the child's exit
 * event, an adopted pid going away, or the driver noticing), kill, a clean stop with a deadline, detaching, and control
 * calls that report a VMM that died under them as VmNotRunningError. `Control` is the driver's control channel.
 */
export abstract class VmmProcessHandle<Control> {
  readonly exited: Promise<VmExit>;
  startTimings?: VmStartTimings;
  protected exitInfo: VmExit | undefined;
  protected detached = false;
  private resolveExited!: (exit: VmExit) => void;
  private livenessTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly spec: VmSpec,
    readonly pid: number,
    childExit: Promise<VmExit> | undefined,
  ) {
    this.exited = new Promise((resolve) => (this.resolveExited = resolve));
    childExit?.then((exit) => this.markExited(exit));
  }

  /** The control channel (QMP, Firecracker's API), valid while the VMM runs and is attached. */
  protected abstract controlChannel(): Control;
  /** Asks the VMM to exit on its own (stop()). */
  protected abstract requestExit(control: Control): Promise<void>;
  /** Whether `error` from the control channel means the connection broke (the VMM may have died). */
  protected abstract isControlBroken(error: unknown): boolean;
  /** Releases what the VM held besides its process, once it is gone. */
  protected onExited(): void {}
  /** Closes the control channel when the agent lets go of a running VM. */
  protected onDetach(): void {}

  get id(): string {
    return this.spec.id;
  }

  get hasExited(): boolean {
    return this.exitInfo !== undefined;
  }

  /** For VMs whose parent is not this process: no exit event, so watch the pid. */
  watchAdoptedProcess(startTicks: string): void {
    this.livenessTimer = watchProcessLiveness(this.pid, startTicks, () => this.markExited({ code: null, signal: null, reason: 'process-gone', at: new Date() }));
  }

  async setForeground(): Promise<void> {
    this.control();
    await setProcessForeground(this.pid);
  }

  async stop(timeoutMs = 10_000): Promise<VmExit> {
    if (this.exitInfo) return this.exitInfo;
    try {
      await this.requestExit(this.control());
    } catch {
      // Not accepted, or the socket closed mid-request as the VM went away: either way kill() below if it stays.
    }
    const exit = await Promise.race([this.exited, delay(timeoutMs).then(() => undefined)]);
    return exit ?? this.kill();
  }

  async kill(): Promise<VmExit> {
    if (this.exitInfo) return this.exitInfo;
    try {
      // The VMM leads its own process group (detached spawn): the wrappers (nice, nsenter, the jailer) exec it.
      killGroupOrProcess(this.pid);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ESRCH') {
        this.markExited({ code: null, signal: 'SIGKILL', reason: 'process-gone', at: new Date() });
      } else {
        throw error;
      }
    }
    return this.exited;
  }

  detach(): void {
    this.detached = true;
    if (this.livenessTimer) clearInterval(this.livenessTimer);
    this.onDetach();
  }

  protected control(): Control {
    if (this.exitInfo) throw new VmNotRunningError(`vm ${this.id} has exited (${this.exitInfo.reason})`);
    if (this.detached) throw new VmNotRunningError(`vm ${this.id} was detached from this driver`);
    return this.controlChannel();
  }

  /**
   * Runs a control exchange. A VMM closes its control socket only when it exits, so a connection broken under a call
   * is the VM dying: once the process is gone the caller gets VmNotRunningError and `exited` is settled, instead of a
   * bare connection error that races the exit.
   */
  protected async controlled<T>(exchange: (control: Control) => Promise<T>): Promise<T> {
    try {
      return await exchange(this.control());
    } catch (error) {
      if (!this.isControlBroken(error)) throw error;
      const exit = await Promise.race([this.exited, delay(EXIT_AFTER_CONTROL_CLOSED_MS).then(() => undefined)]);
      throw exit ? new VmNotRunningError(`vm ${this.id} has exited (${exit.reason})`) : error;
    }
  }

  protected markExited(exit: VmExit): void {
    if (this.exitInfo) return;
    this.exitInfo = exit;
    if (this.livenessTimer) clearInterval(this.livenessTimer);
    this.onExited();
    this.resolveExited(exit);
  }
}
