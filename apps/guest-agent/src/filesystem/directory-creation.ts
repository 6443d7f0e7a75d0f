import { chown, mkdir, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { SystemUser } from '../users/system-users';
import { assertCanChangeEntriesOf } from './access-check';

/**
 * mkdir -p on behalf of a user: checks the user may create in the deepest existing ancestor, then creates the rest
 * and hands every new directory to the user, as envd does for uploads and MakeDir.
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
  if (missing.length === 0) return;
  await assertCanChangeEntriesOf(user, existing);
  for (const path of missing) {
    try {
      await mkdir(path, { mode: 0o755 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      continue;
    }
    await chown(path, user.uid, user.gid);
  }
}
