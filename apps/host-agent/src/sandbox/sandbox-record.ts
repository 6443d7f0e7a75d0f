import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { EgressPolicy } from '@kiln/contracts';
import { RecordSealer } from './record-sealer';

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
  /**
   * The egress policy in force (normalised, as the control plane sent it), re-applied to the slot when a restarted
   * agent adopts the sandbox. Absent in records from before egress policies: no policy.
   */
  egress?: EgressPolicy;
  /** The lifetime the control plane enforces, as it gave it at create (reported back, not enforced here). */
  timeoutSeconds?: number;
  /**
   * The checkpoint directory (a fork's or a named snapshot's) the sandbox's disk layer backs onto, when it was started
   * from one: that checkpoint is kept as long as this sandbox exists.
   */
  diskCheckpointDir?: string;
  /**
   * Set while the sandbox is paused: its VMM is gone, and this checkpoint (in its clone directory) is what a resume
   * restores. Saving the record with it is the pause's commit point; clearing it, the resume's.
   */
  paused?: PausedState;
}

export interface PausedState {
  checkpointDir: string;
  keepMemory: boolean;
  manifestSha256: string;
  pausedAt: string;
  memoryBytes: number;
  stateBytes: number;
  diskBytes: number;
}

/** The record as written to disk: the envd token only sealed (RecordSealer), never in plaintext. */
type StoredSandboxRecord = Omit<SandboxRecord, 'envdAccessToken'> & { envdAccessTokenSealed?: string };

export class SandboxRecordStore {
  constructor(
    private readonly root: string,
    private readonly sealer: RecordSealer,
  ) {}

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
    const { envdAccessToken, ...rest } = record;
    const stored: StoredSandboxRecord = envdAccessToken ? { ...rest, envdAccessTokenSealed: this.sealer.seal(record.sandboxId, envdAccessToken) } : rest;
    await writeFile(`${path}.tmp`, JSON.stringify(stored, null, 2), { mode: 0o600 });
    await rename(`${path}.tmp`, path);
  }

  async remove(sandboxId: string): Promise<void> {
    await rm(this.dirOf(sandboxId), { recursive: true, force: true });
  }

  /**
   * Every sandbox directory, with its record when one could be read. A token that does not open (the host state key
   * changed) leaves the record without one: the traffic proxy then refuses everything but /health for it.
   */
  async scan(): Promise<Array<{ sandboxId: string; record?: SandboxRecord; tokenUnreadable?: string }>> {
    await mkdir(this.root, { recursive: true });
    const entries = await readdir(this.root, { withFileTypes: true });
    return Promise.all(
      entries
        .filter((e) => e.isDirectory())
        .map(async (e) => {
          try {
            const { envdAccessTokenSealed, ...rest } = JSON.parse(await readFile(join(this.root, e.name, 'sandbox.json'), 'utf8')) as StoredSandboxRecord;
            const record: SandboxRecord = rest;
            if (envdAccessTokenSealed) {
              try {
                record.envdAccessToken = this.sealer.open(e.name, envdAccessTokenSealed);
              } catch (error) {
                return { sandboxId: e.name, record, tokenUnreadable: (error as Error).message };
              }
            }
            return { sandboxId: e.name, record };
          } catch {
            return { sandboxId: e.name };
          }
        }),
    );
  }
}
