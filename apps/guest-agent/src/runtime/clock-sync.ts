import { execFile } from 'node:child_process';

/** Corrections smaller than this are left alone: stepping the clock for noise would only make time jump. */
const MIN_CORRECTION_MS = 1000;

/**
 * Sets the guest's wall clock from the timestamp the host sends in /init. After a snapshot restore the guest's
 * clock is wherever it was at snapshot time, so this is how it learns the real time. Enabled only as one of the
 * guest duties (see guest-duties.ts), never on a host.
 */
export class ClockSync {
  constructor(private readonly enabled: boolean) {}

  get isEnabled(): boolean {
    return this.enabled;
  }

  /** Returns whether the clock was stepped. */
  async syncTo(hostTimeMs: number): Promise<boolean> {
    if (!this.enabled || !Number.isFinite(hostTimeMs)) return false;
    if (Math.abs(Date.now() - hostTimeMs) < MIN_CORRECTION_MS) return false;
    const seconds = (hostTimeMs / 1000).toFixed(3);
    await new Promise<void>((resolve, reject) =>
      execFile('date', ['-u', '-s', `@${seconds}`], { timeout: 5000 }, (err) => (err ? reject(err) : resolve())),
    );
    return true;
  }
}

