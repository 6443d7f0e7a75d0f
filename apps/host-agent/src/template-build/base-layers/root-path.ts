import { lstat, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { UnsupportedBaseImageError } from './base-layers.errors';

/**
 * The host path of `path` inside the unpacked rootfs `root`, resolving symlinks the way the guest will see them
 * (absolute targets relative to `root`, `..` never above it). An image is untrusted: its `/etc` may be a symlink to
 * `/etc` or `../../..`, and writing through such a link must land in the image, never on the host. Components that
 * do not exist yet are returned as they are (creating them cannot follow anything).
 */
export async function resolveInRoot(root: string, path: string): Promise<string> {
  let pending = splitPath(path);
  const resolved: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const name = pending.shift()!;
    if (name === '..') {
      resolved.pop();
      continue;
    }
    const hostPath = join(root, ...resolved, name);
    let isLink = false;
    try {
      isLink = (await lstat(hostPath)).isSymbolicLink();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT' || (error as NodeJS.ErrnoException).code === 'ENOTDIR') {
        return join(root, ...resolved, name, ...pending);
      }
      throw error;
    }
    if (!isLink) {
      resolved.push(name);
      continue;
    }
    if (++links > 40) throw new UnsupportedBaseImageError(`the image's ${path} has a symlink loop`);
    const target = await readlink(hostPath);
    if (target.startsWith('/')) resolved.length = 0;
    pending = [...splitPath(target), ...pending];
  }
  return join(root, ...resolved);
}

function splitPath(path: string): string[] {
  return path.split('/').filter((part) => part !== '' && part !== '.');
}
