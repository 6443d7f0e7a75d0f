import { isAbsolute, join, normalize } from 'node:path';
import type { SystemUser } from '../users/system-users';

/** envd's rule: `~` and `~/x` mean the user's home; any other relative path is relative to the home too. */
export function resolveUserPath(path: string, user: SystemUser): string {
  if (path === '~') return user.home;
  if (path.startsWith('~/')) return normalize(join(user.home, path.slice(2)));
  if (!isAbsolute(path)) return normalize(join(user.home, path));
  return normalize(path);
}
