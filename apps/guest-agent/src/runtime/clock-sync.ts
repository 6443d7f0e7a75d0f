import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';

export type ClockSyncMode = 'auto' | 'always' | 'never';

/** Corrections smaller than this are left alone: stepping the clock for noise would only make time jump. */
const MIN_CORRECTION_MS = 1000;

/**
 * Sets the guest's wall clock from the timestamp the host sends in /init. After a snapshot restore the guest's
 * clock is wherever it was at snapshot time, so this is how it learns the real time. It must never run on a
 * developer's or CI host: 'auto' only acts as root when our parent process is tini, which is how the VM image
 * starts the agent; tests pass --clock-sync never on top of that.
 */
export class ClockSync {
  private readonly enabled: boolean;

  constructor(mode: ClockSyncMode) {
    this.enabled = mode === 'always' || (mode === 'auto' && runsUnderVmInit());
  }

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

/** True when we are root and our parent is tini: the VM image starts the agent under tini, a host never does. */
function runsUnderVmInit(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    return readFileSync(`/proc/${process.ppid}/comm`, 'utf8').trim() === 'tini';
  } catch {
    return false;
  }
}
