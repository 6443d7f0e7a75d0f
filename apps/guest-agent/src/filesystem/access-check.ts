import { constants } from 'node:fs';
import { lstat, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Stats } from 'node:fs';
import type { SystemUser } from '../users/system-users';

export class AccessDeniedError extends Error {
  readonly code = 'EACCES';
}

export type AccessWant = 'read' | 'write' | 'search';

const BITS: Record<AccessWant, [number, number, number]> = {
  read: [constants.S_IRUSR, constants.S_IRGRP, constants.S_IROTH],
  write: [constants.S_IWUSR, constants.S_IWGRP, constants.S_IWOTH],
  search: [constants.S_IXUSR, constants.S_IXGRP, constants.S_IXOTH],
};

/**
 * The agent runs as root, so the kernel would allow everything; file operations on behalf of a user are checked
 * against that user's POSIX permission bits here instead (owner, then group, then other, as the kernel does).
 */
export function permits(user: SystemUser, info: Stats, want: AccessWant): boolean {
  if (user.uid === 0) return true;
  const [ownerBit, groupBit, otherBit] = BITS[want];
  if (info.uid === user.uid) return (info.mode & ownerBit) !== 0;
  if (user.groups.includes(info.gid)) return (info.mode & groupBit) !== 0;
  return (info.mode & otherBit) !== 0;
}

/** Every directory above `path` must be searchable by the user for the user to reach `path` at all. */
export async function assertReachable(user: SystemUser, path: string): Promise<void> {
  if (user.uid === 0) return;
  const ancestors: string[] = [];
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    ancestors.push(dir);
    if (dir === dirname(dir)) break;
  }
  for (const dir of ancestors.reverse()) {
    let info: Stats;
    try {
      info = await stat(dir);
    } catch {
      return; // A missing ancestor is reported by the operation itself as not found.
    }
    if (!permits(user, info, 'search')) throw new AccessDeniedError(`permission denied: cannot access '${dir}'`);
  }
}

/** Checks `want` on `path` itself (following symlinks unless told not to) after checking it can be reached. */
export async function assertAccess(user: SystemUser, path: string, want: AccessWant, followLinks = true): Promise<void> {
  await assertReachable(user, path);
  if (user.uid === 0) return;
  const info = followLinks ? await stat(path) : await lstat(path);
  if (!permits(user, info, want)) throw new AccessDeniedError(`permission denied: '${path}'`);
}

/** Creating or removing an entry needs write and search on the directory that holds it. */
export async function assertCanChangeEntriesOf(user: SystemUser, dir: string): Promise<void> {
  await assertAccess(user, dir, 'write');
  await assertAccess(user, dir, 'search');
}
