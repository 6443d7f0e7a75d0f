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
    // A VMM spawned just before the agent died may not have written its pidfile yet when terminate() looked:
    // whatever still runs with this clone's paths on its command line goes too, or nothing would own it.
    await killProcessesNaming(`${dir}/`);
    removed.push(entry.name);
  }
  return removed;
}

/** SIGKILLs every process whose command line contains `fragment`, and waits (bounded) until they are gone. */
async function killProcessesNaming(fragment: string): Promise<void> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(fragment)) pids.push(Number(entry));
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
