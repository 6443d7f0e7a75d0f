import { statfs } from 'node:fs/promises';

/**
 * Filesystem magic numbers (statfs f_type, include/uapi/linux/magic.h) of the mounts envd counts as network
 * filesystems: inotify sees only changes made through this machine's kernel there, so a watch misses most of them.
 */
const NETWORK_FILESYSTEMS = new Map<number, string>([
  [0x6969, 'NFS'],
  [0xff534d42, 'CIFS'],
  [0x517b, 'SMB'],
  [0xfe534d42, 'SMB2'],
  [0x65735546, 'FUSE'],
]);

/** The network filesystem a statfs type stands for, or undefined for a local one. */
export function networkFilesystemName(fsType: number | bigint): string | undefined {
  // f_type is a signed word in some ABIs: compare the 32 bits the magic numbers have.
  return NETWORK_FILESYSTEMS.get(Number(BigInt.asUintN(32, BigInt(fsType))));
}

/** Which network filesystem holds `path` (symlinks followed), or undefined when it is local. */
export async function networkMountOf(path: string): Promise<string | undefined> {
  return networkFilesystemName((await statfs(path)).type);
}
