import type { GuestKernel } from './guest-kernel';

/** Corrections smaller than this are left alone: stepping the clock for noise would only make time jump. */
const MIN_CORRECTION_MS = 1000;

/**
 * Sets the guest's wall clock from the timestamp the host sends in /init. After a snapshot restore the guest's
 * clock is wherever it was at snapshot time, so this is how it learns the real time. Only with guest duties on
 * (see guest-duties.ts), never on a host.
 */
export class ClockSync {
  constructor(private readonly kernel: GuestKernel | undefined) {}

  get isEnabled(): boolean {
    return this.kernel !== undefined;
  }

  /** Returns whether the clock was stepped. */
  syncTo(hostTimeMs: number): boolean {
    if (!this.kernel || !Number.isFinite(hostTimeMs)) return false;
    if (Math.abs(Date.now() - hostTimeMs) < MIN_CORRECTION_MS) return false;
    this.kernel.setRealtimeClock(hostTimeMs);
    return true;
  }
}
