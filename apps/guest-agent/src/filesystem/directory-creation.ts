import { chown, mkdir, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { SystemUser } from '../users/system-users';

/**
 * mkdir -p on behalf of a user, as envd does for uploads, MakeDir and Move: every missing directory is created by the
 * agent (root) and handed to the user, whether or not the user could have created it in the deepest existing
 * ancestor. Writing `/0/x.txt` as `user` therefore succeeds and leaves `/0` owned by `user`, as in an E2B sandbox.
 * What already exists keeps its owner and mode. Reaching the path (search permission on existing ancestors) is the
 * caller's check.
 */
export async function ensureDirectoryFor(user: SystemUser, dir: string): Promise<void> {
  const missing: string[] = [];
  let existing = dir;
  for (;;) {
    try {
      const info = await stat(existing);
      if (!info.isDirectory()) {
        const err = new Error(`path '${existing}' is not a directory`) as NodeJS.ErrnoException;
        err.code = 'ENOTDIR';
        throw err;
      }
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      missing.unshift(existing);
      const parent = dirname(existing);
      if (parent === existing) break;
      existing = parent;
    }
  }
  for (const path of missing) {
    try {
      await mkdir(path, { mode: 0o755 });
    } catch (err) {
      // Created by someone else meanwhile: theirs, left as it is.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      continue;
    }
    await chown(path, user.uid, user.gid);
  }
}
