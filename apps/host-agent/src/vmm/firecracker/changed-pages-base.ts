import { randomBytes } from 'node:crypto';
import { readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { linkOrCopy } from '../../file-integrity';
import { join } from 'node:path';
import type { ChangedMemoryFiles } from '../vmm-driver';

/** Every file of the base in a VM's state dir starts with this (the record, its page files, the lost marker). */
const PREFIX = 'changed-memory';
const RECORD_FILE = `${PREFIX}.json`;
const LOST_FILE = `${PREFIX}.lost`;

/**
 * The pages a Firecracker clone had changed from its memory file before its current dirty-page log began, kept in the
 * VM's state dir: Firecracker's Diff snapshot lists only the pages dirtied since the restore or since the previous
 * snapshot, so a checkpoint is that Diff merged onto this base (diff-memory.ts).
 *
 * At a restore from a checkpoint the base is that checkpoint's memory.pages/.index; after each checkpoint, that
 * checkpoint's own. The files are hard links (a copy across file systems), so the base outlives the checkpoint
 * directories it came from (a fork's checkpoint is collected once its forks started) and an agent restart (adopt).
 * `changed-memory.json` names the current pair and is replaced atomically, so a pages file is never paired with
 * another checkpoint's index. `changed-memory.lost` (its content the reason) marks a clone whose dirty log was spent
 * without its pages being kept: it must not be checkpointed again.
 */
export const ChangedPagesBase = {
  /** A VM starting in `stateDir`: drops what an earlier VM left; takes `restoredFrom`'s pages as the base, if any. */
  async reset(stateDir: string, restoredFrom: ChangedMemoryFiles | undefined): Promise<void> {
    await removeAll(stateDir);
    if (restoredFrom) await this.replace(stateDir, restoredFrom);
  },

  /** The current base: its files, none (`files` undefined), or why it was lost. */
  async read(stateDir: string): Promise<{ files: ChangedMemoryFiles | undefined } | { lost: string }> {
    const lost = await readFile(join(stateDir, LOST_FILE), 'utf8').catch(() => undefined);
    if (lost !== undefined) return { lost: lost.trim() };
    const record = await readFile(join(stateDir, RECORD_FILE), 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
    if (record === undefined) return { files: undefined };
    const { pages, index } = JSON.parse(record) as { pages: string; index: string };
    return { files: { pagesPath: join(stateDir, pages), indexPath: join(stateDir, index) } };
  },

  /** Makes `files` (a checkpoint's memory.pages/.index, never modified afterwards) the base. */
  async replace(stateDir: string, files: ChangedMemoryFiles): Promise<void> {
    const generation = `${PREFIX}-${Date.now()}-${randomBytes(4).toString('hex')}`;
    const pages = `${generation}.pages`;
    const index = `${generation}.index`;
    await linkOrCopy(files.pagesPath, join(stateDir, pages));
    await linkOrCopy(files.indexPath, join(stateDir, index));
    const partial = join(stateDir, `${RECORD_FILE}.partial`);
    await writeFile(partial, JSON.stringify({ pages, index }));
    await rename(partial, join(stateDir, RECORD_FILE));
    await removeAll(stateDir, new Set([RECORD_FILE, pages, index]));
  },

  /** From now on the clone refuses checkpoints, for `reason`. */
  async markLost(stateDir: string, reason: string): Promise<void> {
    await writeFile(join(stateDir, LOST_FILE), `${reason}\n`);
  },
};

async function removeAll(stateDir: string, keep = new Set<string>()): Promise<void> {
  const names = await readdir(stateDir).catch(() => [] as string[]);
  await Promise.all(names.filter((name) => name.startsWith(PREFIX) && !keep.has(name)).map((name) => rm(join(stateDir, name), { force: true })));
}

