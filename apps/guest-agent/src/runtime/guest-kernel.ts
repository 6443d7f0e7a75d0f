import { existsSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The privileged calls Node has no API for, from the agent's native addon (apps/guest-agent/native). Both run
 * in-process: the create path right after a snapshot restore forks nothing.
 */
export interface GuestKernel {
  /** clock_settime(CLOCK_REALTIME). */
  setRealtimeClock(epochMs: number): void;
  /** Credits `seed` to the kernel's entropy pool, reseeds the CRNG at once, then reseeds this process's OpenSSL. */
  reseedRandom(seed: Buffer): void;
}

const ADDON_FILE = 'guest_kernel.node';

/**
 * Where the addon sits: next to the bundle (`native/`, how the VM image ships it), or in the node-gyp build
 * directory when the agent runs from source or from tsc output.
 */
function addonCandidates(): string[] {
  return [
    join(__dirname, 'native', ADDON_FILE),
    join(__dirname, '..', '..', 'native', 'build', 'Release', ADDON_FILE),
    join(__dirname, '..', '..', '..', 'native', 'build', 'Release', ADDON_FILE),
  ];
}

export class GuestKernelUnavailableError extends Error {}

/** Loads the addon; throws GuestKernelUnavailableError naming every place it looked. */
export function loadGuestKernel(): GuestKernel {
  const candidates = addonCandidates();
  const found = candidates.find((path) => existsSync(path));
  if (!found) throw new GuestKernelUnavailableError(`native addon ${ADDON_FILE} not found (looked in ${candidates.join(', ')})`);
  const addon = { exports: {} as GuestKernel };
  process.dlopen(addon, found);
  return addon.exports;
}
