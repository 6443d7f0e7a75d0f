import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * What the agent must remember about a sandbox to adopt it after a restart or
 * clean up after a crash. Written to `<dataDir>/sandboxes/<id>/sandbox.json`
 * before the VM starts, so no resource exists without a record that owns it.
 */
export interface SandboxRecord {
  sandboxId: string;
  teamId: string;
  templateId: string;
  buildId: string;
  vcpus: number;
  memoryMib: number;
  metadata: Record<string, string>;
  envdAccessToken?: string;
  slotIndex: number;
  rootfs: { path: string; format: 'raw' | 'qcow2'; driver: string };
  vmStateDir: string;
  serialLogPath: string;
  /**
   * The clone directory the sandbox was made from (VM state, serial log and disk layer live in it); removed with
   * the sandbox. Absent in records written before clones had directories of their own.
   */
  cloneDir?: string;
  createdAt: string;
}

export class SandboxRecordStore {
  constructor(private readonly root: string) {}

  dirOf(sandboxId: string): string {
    return join(this.root, sandboxId);
  }

  async prepare(sandboxId: string): Promise<string> {
    const dir = this.dirOf(sandboxId);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    return dir;
  }

  /** Atomic replace, so a crash mid-write never leaves a half record. */
  async save(record: SandboxRecord): Promise<void> {
    const path = join(this.dirOf(record.sandboxId), 'sandbox.json');
    await writeFile(`${path}.tmp`, JSON.stringify(record, null, 2));
    await rename(`${path}.tmp`, path);
  }

  async remove(sandboxId: string): Promise<void> {
    await rm(this.dirOf(sandboxId), { recursive: true, force: true });
  }

  /** Every sandbox directory, with its record when one could be read. */
  async scan(): Promise<Array<{ sandboxId: string; record?: SandboxRecord }>> {
    await mkdir(this.root, { recursive: true });
    const entries = await readdir(this.root, { withFileTypes: true });
    return Promise.all(
      entries
        .filter((e) => e.isDirectory())
        .map(async (e) => {
          try {
            const record = JSON.parse(await readFile(join(this.root, e.name, 'sandbox.json'), 'utf8')) as SandboxRecord;
            return { sandboxId: e.name, record };
          } catch {
            return { sandboxId: e.name };
          }
        }),
    );
  }
}
