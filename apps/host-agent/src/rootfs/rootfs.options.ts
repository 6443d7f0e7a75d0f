import { RootfsError } from './rootfs.errors';

export const ROOTFS_OPTIONS = Symbol('ROOTFS_OPTIONS');

/**
 * How a sandbox's writable layer is made over a read-only template disk:
 *  - qcow2: a qcow2 overlay whose backing file is the template (QEMU only; instant, any filesystem);
 *  - reflink: `cp --reflink=always` of a raw image (any VMM; instant, needs xfs/btrfs and one filesystem);
 *  - copy: a full sparse copy of a raw image (any VMM, any filesystem; costs the image's allocated size).
 */
export type RootfsDriverName = 'qcow2' | 'reflink' | 'copy';
export type ImageFormat = 'raw' | 'qcow2';
export type VmmKind = 'qemu' | 'firecracker';

export interface RootfsOptions {
  /** `auto`: qcow2 for QEMU; for other VMMs reflink where the data directory supports it, else copy. */
  driver: 'auto' | RootfsDriverName;
  /** The VMM that will open the layers; only QEMU reads qcow2. */
  vmm: VmmKind;
  /** Time limit for one qemu-img/cp run; copies and flattenings of big images take a while. */
  commandTimeoutMs: number;
}

export const DEFAULT_ROOTFS_OPTIONS: RootfsOptions = {
  driver: 'auto',
  vmm: 'qemu',
  commandTimeoutMs: 10 * 60_000,
};

export function resolveRootfsOptions(partial: Partial<RootfsOptions> = {}): RootfsOptions {
  const defined = Object.fromEntries(Object.entries(partial).filter(([, v]) => v !== undefined));
  const options: RootfsOptions = { ...DEFAULT_ROOTFS_OPTIONS, ...defined };
  if (!['auto', 'qcow2', 'reflink', 'copy'].includes(options.driver)) {
    throw new RootfsError(`rootfs driver must be auto, qcow2, reflink or copy, got ${JSON.stringify(options.driver)}`);
  }
  if (!['qemu', 'firecracker'].includes(options.vmm)) {
    throw new RootfsError(`vmm must be qemu or firecracker, got ${JSON.stringify(options.vmm)}`);
  }
  if (options.driver === 'qcow2' && options.vmm !== 'qemu') {
    throw new RootfsError(`the qcow2 rootfs driver needs QEMU; ${options.vmm} reads raw images only`);
  }
  if (!Number.isInteger(options.commandTimeoutMs) || options.commandTimeoutMs <= 0) {
    throw new RootfsError(`commandTimeoutMs must be a positive integer, got ${options.commandTimeoutMs}`);
  }
  return options;
}
