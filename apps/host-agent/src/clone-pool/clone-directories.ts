import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { VmmDriver } from '../vmm';

export const CLONE_VM_STATE_DIR = 'vm';
export const CLONE_SERIAL_LOG = 'serial.log';

/**
 * Removes every clone directory under `root` that no sandbox claims, killing its VMM first if it still runs:
 * clones that were still in the pool when the agent stopped, or half-made when it died. Returns the ids removed.
 * Used at agent start (after live sandboxes are adopted) and by `npm run down` (claiming none).
 */
export async function removeUnclaimedClones(root: string, claimed: ReadonlySet<string>, vmm: VmmDriver): Promise<string[]> {
  await mkdir(root, { recursive: true });
  const removed: string[] = [];
  for (const entry of await readdir(root, { withFileTypes: true })) {
    const dir = join(root, entry.name);
    if (claimed.has(dir)) continue;
    if (entry.isDirectory()) await vmm.terminate(join(dir, CLONE_VM_STATE_DIR));
    await rm(dir, { recursive: true, force: true });
    removed.push(entry.name);
  }
  return removed;
}
