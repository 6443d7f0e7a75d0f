import { existsSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The privileged calls Node has no API for, from the agent's native addon (apps/guest-agent/native). Both run
 * in-process: the create path right after a snapshot restore forks nothing. Used only with guest duties on.
 */
export interface GuestKernel {
  /** clock_settime(CLOCK_REALTIME). */
  setRealtimeClock(epochMs: number): void;
  /** Credits `seed` to the kernel's entropy pool, reseeds the CRNG at once, then reseeds this process's OpenSSL. */
  reseedRandom(seed: Buffer): void;
}

/** FIONREAD, which Node does not expose: how many bytes wait unread in a pipe or a terminal. */
export interface PipeCalls {
  /**
   * Bytes waiting behind `fd` (a pipe, or a terminal's master side, whose pending output the kernel first moves to
   * where FIONREAD counts it: 0 means it holds nothing). Throws (code EBADF...) when fd cannot be asked.
   */
  pipeBytesAvailable(fd: number): number;
}

/**
 * Extended attributes, which Node has no API for. A target is a path (symlinks followed) or an open descriptor.
 * Each call runs on libuv's thread pool and rejects with an Error carrying Node's `code` ('ENOTSUP', 'ENODATA'...).
 */
export interface XattrCalls {
  listXattrs(target: string | number): Promise<string[]>;
  getXattr(target: string | number, name: string): Promise<Buffer>;
  setXattr(target: string | number, name: string, value: Buffer | string): Promise<void>;
  removeXattr(target: string | number, name: string): Promise<void>;
}

/** Everything the addon exports. */
export type GuestAddon = GuestKernel & PipeCalls & XattrCalls;

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
export function loadGuestAddon(): GuestAddon {
  const candidates = addonCandidates();
  const found = candidates.find((path) => existsSync(path));
  if (!found) throw new GuestKernelUnavailableError(`native addon ${ADDON_FILE} not found (looked in ${candidates.join(', ')})`);
  const addon = { exports: {} as GuestAddon };
  process.dlopen(addon, found);
  for (const name of ['setRealtimeClock', 'reseedRandom', 'pipeBytesAvailable', 'listXattrs', 'getXattr', 'setXattr', 'removeXattr'] as const) {
    // A stale addon from an older build would otherwise fail only when a request first needs the missing call.
    if (typeof addon.exports[name] !== 'function') throw new GuestKernelUnavailableError(`native addon ${found} has no ${name}(); rebuild it`);
  }
  return addon.exports;
}
