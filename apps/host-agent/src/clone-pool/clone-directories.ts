import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
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
  // A VMM spawned just before the agent died has no runtime record yet, so terminate() cannot find it: whatever
  // still runs with an unclaimed clone's paths on its command line goes too, or nothing would ever own it.
  await killProcessesNaming(root, claimed);
  return removed;
}

/** SIGKILLs every process naming a path under `root`/<clone>/ for a clone not in `claimed`; waits (bounded) for them. */
async function killProcessesNaming(root: string, claimed: ReadonlySet<string>): Promise<void> {
  const prefix = `${root}/`;
  const pids: number[] = [];
  for (const entry of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const args = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0');
    const cloneDirs = args.flatMap((arg) => {
      const at = arg.indexOf(prefix);
      return at === -1 ? [] : [join(root, arg.slice(at + prefix.length).split('/')[0])];
    });
    if (cloneDirs.length > 0 && !cloneDirs.some((dir) => claimed.has(dir))) pids.push(Number(entry));
  }
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
  for (let i = 0; i < 50 && pids.some(isAlive); i++) await new Promise((r) => setTimeout(r, 20));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
