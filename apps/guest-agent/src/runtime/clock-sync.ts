import { ChildProcessByStdio, spawn } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { createInterface } from 'node:readline';

/** Corrections smaller than this are left alone: stepping the clock for noise would only make time jump. */
const MIN_CORRECTION_MS = 1000;
const STEP_TIMEOUT_MS = 5000;

/**
 * Sets the guest's wall clock from the timestamp the host sends in /init. After a snapshot restore the guest's
 * clock is wherever it was at snapshot time, so this is how it learns the real time. Enabled only as one of the
 * guest duties (see guest-duties.ts), never on a host.
 *
 * The step runs `date` from a small shell started once, when the agent starts (so before the template snapshot):
 * forking the agent's own large Node process for every /init cost about half a second right after a restore under
 * TCG, on the sandbox-create path; forking a tiny shell costs a fraction of that.
 */
export class ClockSync {
  private helper?: ChildProcessByStdio<Writable, Readable, null>;
  private readonly pending: Array<(line: string) => void> = [];

  constructor(private readonly enabled: boolean) {
    if (enabled) this.startHelper();
  }

  get isEnabled(): boolean {
    return this.enabled;
  }

  private startHelper(): void {
    const helper = spawn('/bin/sh', [], { stdio: ['pipe', 'pipe', 'ignore'] });
    helper.on('error', () => undefined);
    helper.on('exit', () => {
      if (this.helper === helper) this.helper = undefined;
      for (const resolve of this.pending.splice(0)) resolve('exited');
    });
    createInterface({ input: helper.stdout }).on('line', (line) => this.pending.shift()?.(line));
    this.helper = helper;
  }

  /** Returns whether the clock was stepped. */
  async syncTo(hostTimeMs: number): Promise<boolean> {
    if (!this.enabled || !Number.isFinite(hostTimeMs)) return false;
    if (Math.abs(Date.now() - hostTimeMs) < MIN_CORRECTION_MS) return false;
    if (!this.helper) this.startHelper();
    const helper = this.helper!;
    const seconds = (hostTimeMs / 1000).toFixed(3);
    const status = await new Promise<string>((resolve) => {
      const timer = setTimeout(() => resolve('timeout'), STEP_TIMEOUT_MS);
      this.pending.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
      // Only digits and a dot reach the shell: `seconds` comes from toFixed on a finite number.
      helper.stdin.write(`date -u -s @${seconds} >/dev/null 2>&1; echo $?\n`);
    });
    if (status !== '0') throw new Error(`date -s failed (${status})`);
    return true;
  }
}
