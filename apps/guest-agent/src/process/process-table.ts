import { statSync } from 'node:fs';
import { findExecutable } from './executable-lookup';
import type { PipeCalls } from '../runtime/guest-kernel';
import type { EventQueue } from '../streaming/event-queue';
import { ManagedProcess, PipeProcess, PtyProcess, type ProcessOutput, type ProcessSpec } from './managed-process';

export class ProcessNotFoundError extends Error {}
export class ProcessStartError extends Error {
  constructor(
    message: string,
    readonly reason: 'invalid_argument' | 'internal',
  ) {
    super(message);
  }
}

export type ProcessSelection = { by: 'pid'; pid: number } | { by: 'tag'; tag: string };

/**
 * The running processes, by pid. A process leaves the table when it ends; nothing here is tied to the request that
 * started it, so a background process outlives its client.
 */
export class ProcessTable {
  private readonly byPid = new Map<number, ManagedProcess>();

  /** `pipes` (the native addon) lets a command's end follow exactly the output it wrote; without it, a fallback. */
  constructor(private readonly pipes?: PipeCalls) {}

  /**
   * Starts a process and returns it with a subscription taken in the same tick as the spawn, so the caller sees
   * every byte of output from the first one on.
   */
  async start(spec: ProcessSpec): Promise<{ started: ManagedProcess; events: EventQueue<ProcessOutput> }> {
    this.assertDirectory(spec.cwd);
    const executable = findExecutable(spec.cmd, spec.cwd, spec.env.PATH ?? '', spec.uid, spec.groups);
    if (!executable) {
      throw new ProcessStartError(`exec: "${spec.cmd}": executable file not found or not executable by the user`, 'invalid_argument');
    }
    let started: ManagedProcess;
    try {
      started = spec.pty ? PtyProcess.spawn(spec, this.pipes) : await PipeProcess.spawn(spec, this.pipes);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const reason = code === 'ENOENT' || code === 'EACCES' ? 'invalid_argument' : 'internal';
      throw new ProcessStartError(`error starting process '${spec.cmd}': ${(err as Error).message}`, reason);
    }
    const events = started.subscribe();
    this.byPid.set(started.pid, started);
    started.onEnd(() => this.byPid.delete(started.pid));
    return { started, events };
  }

  find(selection: ProcessSelection): ManagedProcess {
    if (selection.by === 'pid') {
      const found = this.byPid.get(selection.pid);
      if (!found) throw new ProcessNotFoundError(`process with pid ${selection.pid} not found`);
      return found;
    }
    for (const candidate of this.byPid.values()) if (candidate.tag === selection.tag) return candidate;
    throw new ProcessNotFoundError(`process with tag '${selection.tag}' not found`);
  }

  list(): ManagedProcess[] {
    return [...this.byPid.values()];
  }

  /** On agent shutdown: take every process group down with it rather than leaving orphans behind. */
  killAll(): void {
    for (const running of this.byPid.values()) running.signal('SIGKILL');
  }

  private assertDirectory(cwd: string): void {
    try {
      const info = statSync(cwd);
      if (!info.isDirectory()) throw new ProcessStartError(`cwd '${cwd}' is not a directory`, 'invalid_argument');
    } catch (err) {
      if (err instanceof ProcessStartError) throw err;
      throw new ProcessStartError(`cwd '${cwd}' does not exist`, 'invalid_argument');
    }
  }
}
