import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { sha256File } from '../file-integrity';
import type { VmAccelerator, VmSpec } from '../vmm';
import { CheckpointCorruptError, CheckpointNotFoundError, InvalidCheckpointIdError } from './checkpoint.errors';

export const CHECKPOINT_FORMAT_VERSION = 1;

/** What a checkpoint was taken for; it decides who owns it (see CheckpointStore). */
export type CheckpointKind = 'pause' | 'fork' | 'snapshot';

/** The files a checkpoint may hold, by role. */
export const CHECKPOINT_FILES = {
  deviceState: 'device-state',
  memoryPages: 'memory.pages',
  memoryIndex: 'memory.index',
  disk: 'disk.qcow2',
} as const;

/**
 * The shape of the VM a checkpoint restores into. A restore must use the checkpointed VM's command line (devices,
 * kernel arguments, memory backend), with only the id, state directory, disk layer and network slot its own.
 */
export interface CheckpointVmShape {
  vcpus: number;
  memoryMib: number;
  kernelPath: string;
  initrdPath: string;
  kernelArgs: string;
  /** The file guest RAM is mapped (private) from; the checkpoint's memory pages are the guest's changes to it. */
  memoryFilePath: string;
  /**
   * Which content that file had: the template snapshot's sha256 of it, or `zero` for the all-zero file of a VM booted
   * from disk. A restore refuses a memory file whose content changed (a template snapshot made anew at the same path).
   */
  memoryFileIdentity: string;
  guestMac: string;
  accelerator: VmAccelerator;
  guestAgentPort: number;
}

/** The shape of the VM `spec` describes, as a checkpoint of it records it. */
export function checkpointVmShape(spec: VmSpec, memoryFileIdentity: string, guestAgentPort: number): CheckpointVmShape {
  return {
    vcpus: spec.vcpus,
    memoryMib: spec.memoryMib,
    kernelPath: spec.kernelPath,
    initrdPath: spec.initrdPath,
    kernelArgs: spec.kernelArgs,
    memoryFilePath: spec.memoryFile?.path ?? '',
    memoryFileIdentity,
    guestMac: spec.network?.guestMac ?? '',
    accelerator: spec.accelerator ?? 'tcg',
    guestAgentPort,
  };
}

export interface CheckpointFileEntry {
  bytes: number;
  sha256: string;
  /** Relative to the checkpoint directory; absent: the file's role name in it. A pause lists the sandbox's own layer. */
  path?: string;
}

export interface CheckpointManifest {
  formatVersion: typeof CHECKPOINT_FORMAT_VERSION;
  id: string;
  kind: CheckpointKind;
  sourceSandboxId: string;
  teamId: string;
  /** The template build whose snapshot memory the checkpoint's pages are changes to. */
  templateId: string;
  buildId: string;
  /** false: a pause that kept only the disk; a resume cold-boots from it. */
  keepMemory: boolean;
  vm: CheckpointVmShape;
  /** The checkpoint whose disk the checkpointed disk backs onto (it was started from one): kept while this one is. */
  diskBackingCheckpointDir?: string;
  /** The guest agent's access token when the checkpoint was taken (sealed): a restore re-initialises the guest with it. */
  accessTokenSealed?: string;
  files: Record<string, CheckpointFileEntry>;
  createdAt: string;
  timings: Record<string, number>;
}

const MANIFEST = 'manifest.json';
/** Marker of a named snapshot deleted while sandboxes started from it still back onto its disk. */
const DELETED_MARKER = 'deleted';
const SNAPSHOT_ID = /^[a-z0-9][a-z0-9-]{0,63}$/;

/**
 * Checkpoint directories on this host: forks' (`forks/<random>`) and named snapshots' (`snapshots/<id>`) under the
 * data dir; a pause keeps its checkpoint in the sandbox's own clone directory, which goes with the sandbox.
 *
 * A fork checkpoint lives as long as a sandbox's disk backs onto it; a deleted snapshot, too. Whatever nobody
 * references is removed by collectGarbage(), which the agent runs after every teardown and delete and at start.
 */
export class CheckpointStore {
  /** Checkpoint dirs whose files this process hashed, keyed to their files' sizes and mtimes. */
  private readonly verified = new Map<string, string>();
  /** Dirs an operation is still filling or starting sandboxes from: never collected. */
  private readonly pinned = new Map<string, number>();

  constructor(private readonly root: string) {}

  get forksDir(): string {
    return join(this.root, 'forks');
  }

  get snapshotsDir(): string {
    return join(this.root, 'snapshots');
  }

  /** A new, empty fork checkpoint directory, pinned until `unpin`. */
  async newForkDir(): Promise<string> {
    const dir = join(this.forksDir, `f${randomBytes(8).toString('hex')}`);
    await mkdir(dir, { recursive: true, mode: 0o755 });
    this.pin(dir);
    return dir;
  }

  snapshotDir(snapshotId: string): string {
    if (!SNAPSHOT_ID.test(snapshotId)) throw new InvalidCheckpointIdError(`snapshot id ${JSON.stringify(snapshotId)} must be 1-64 lowercase letters, digits or dashes`);
    return join(this.snapshotsDir, snapshotId);
  }

  pin(dir: string): void {
    this.pinned.set(dir, (this.pinned.get(dir) ?? 0) + 1);
  }

  unpin(dir: string): void {
    const count = (this.pinned.get(dir) ?? 1) - 1;
    if (count <= 0) this.pinned.delete(dir);
    else this.pinned.set(dir, count);
  }

  /**
   * Hashes the files not hashed yet and writes the manifest last (atomically, synced): a checkpoint without a
   * manifest is incomplete and is never restored. Returns the manifest and its own sha256.
   */
  async seal(
    dir: string,
    manifest: Omit<CheckpointManifest, 'files' | 'formatVersion'>,
    files: Record<string, { path?: string; sha256?: string }>,
  ): Promise<{ manifest: CheckpointManifest; manifestSha256: string }> {
    const entries: Record<string, CheckpointFileEntry> = {};
    await Promise.all(
      Object.entries(files).map(async ([name, file]) => {
        const path = this.filePath(dir, name, file.path);
        const { size } = await stat(path);
        entries[name] = { bytes: size, sha256: file.sha256 ?? (await sha256File(path)), ...(file.path ? { path: file.path } : {}) };
      }),
    );
    const full: CheckpointManifest = { formatVersion: CHECKPOINT_FORMAT_VERSION, ...manifest, files: entries };
    const text = JSON.stringify(full, null, 2);
    const partial = join(dir, `${MANIFEST}.partial`);
    const handle = await open(partial, 'w', 0o600);
    try {
      await handle.writeFile(text);
      await handle.datasync();
    } finally {
      await handle.close();
    }
    await rename(partial, join(dir, MANIFEST));
    // Every file was hashed by this process just now (while written, or above): restores from it (a fork's) skip it.
    this.verified.set(dir, await this.fingerprint(dir, full));
    return { manifest: full, manifestSha256: createHash('sha256').update(text).digest('hex') };
  }

  async read(dir: string): Promise<CheckpointManifest> {
    let text: string;
    try {
      text = await readFile(join(dir, MANIFEST), 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new CheckpointNotFoundError(`no checkpoint in ${dir}`);
      throw error;
    }
    let manifest: CheckpointManifest;
    try {
      manifest = JSON.parse(text) as CheckpointManifest;
    } catch {
      throw new CheckpointCorruptError(`${join(dir, MANIFEST)} is not valid JSON`);
    }
    if (manifest.formatVersion !== CHECKPOINT_FORMAT_VERSION) {
      throw new CheckpointCorruptError(`${join(dir, MANIFEST)} has format ${manifest.formatVersion}, this agent reads ${CHECKPOINT_FORMAT_VERSION}`);
    }
    return manifest;
  }

  /** The path of one of a checkpoint's files. */
  filePath(dir: string, name: string, relative?: string): string {
    const path = resolve(dir, relative ?? name);
    if (!isAbsolute(path)) throw new CheckpointCorruptError(`bad path for ${name} in ${dir}`);
    return path;
  }

  /**
   * Every file's size and sha256 against the manifest; CheckpointCorruptError names the first that differs. A
   * directory is hashed once per process, after that only re-checked for changed sizes or mtimes (restores of one
   * checkpoint, e.g. ten forks, do not hash it ten times).
   */
  async verify(dir: string, manifest: CheckpointManifest): Promise<void> {
    const fingerprint = await this.fingerprint(dir, manifest);
    if (this.verified.get(dir) === fingerprint) return;
    await Promise.all(
      Object.entries(manifest.files).map(async ([name, expected]) => {
        const path = this.filePath(dir, name, expected.path);
        const size = await stat(path).then((s) => s.size, () => -1);
        if (size < 0) throw new CheckpointCorruptError(`checkpoint ${manifest.id}: ${name} is missing`);
        if (size !== expected.bytes) throw new CheckpointCorruptError(`checkpoint ${manifest.id}: ${name} has ${size} bytes, its manifest says ${expected.bytes}`);
        const actual = await sha256File(path);
        if (actual !== expected.sha256) throw new CheckpointCorruptError(`checkpoint ${manifest.id}: ${name} does not match its sha256 (corrupted)`);
      }),
    );
    this.verified.set(dir, fingerprint);
  }

  /** A file changed after it was verified (mtime moves on every write) is hashed again. */
  private async fingerprint(dir: string, manifest: CheckpointManifest): Promise<string> {
    const parts = await Promise.all(
      Object.entries(manifest.files).map(async ([name, entry]) => {
        const s = await stat(this.filePath(dir, name, entry.path)).catch(() => undefined);
        return `${name}:${s?.size ?? -1}:${s?.mtimeMs ?? -1}`;
      }),
    );
    return parts.join('|');
  }

  async remove(dir: string): Promise<void> {
    this.verified.delete(dir);
    await rm(dir, { recursive: true, force: true });
  }

  /** Named snapshots on this host (deleted ones excluded). */
  async snapshotIds(): Promise<string[]> {
    const ids: string[] = [];
    for (const id of await listDirs(this.snapshotsDir)) {
      if (!(await exists(join(this.snapshotsDir, id, DELETED_MARKER)))) ids.push(id);
    }
    return ids;
  }

  async isDeleted(dir: string): Promise<boolean> {
    return exists(join(dir, DELETED_MARKER));
  }

  /** Marks a named snapshot deleted: no new sandbox starts from it; its files go once nothing backs onto them. */
  async markDeleted(dir: string): Promise<boolean> {
    if (!(await exists(join(dir, MANIFEST))) && !(await exists(dir))) return false;
    const already = await exists(join(dir, DELETED_MARKER));
    await writeFile(join(dir, DELETED_MARKER), new Date().toISOString());
    return !already;
  }

  /**
   * Removes fork checkpoints and deleted snapshots that no sandbox (`referenced`: the checkpoint dirs live and paused
   * sandboxes' disks back onto) and no kept checkpoint needs, and incomplete directories (no manifest) nobody is
   * filling. Returns the dirs removed.
   */
  async collectGarbage(referenced: Iterable<string>): Promise<string[]> {
    const all: Array<{ dir: string; keep: boolean }> = [];
    for (const id of await listDirs(this.forksDir)) all.push({ dir: join(this.forksDir, id), keep: false });
    for (const id of await listDirs(this.snapshotsDir)) {
      const dir = join(this.snapshotsDir, id);
      all.push({ dir, keep: !(await exists(join(dir, DELETED_MARKER))) });
    }
    const backing = new Map<string, string | undefined>();
    const complete = new Set<string>();
    for (const { dir } of all) {
      const manifest = await this.read(dir).catch(() => undefined);
      if (manifest) complete.add(dir);
      backing.set(dir, manifest?.diskBackingCheckpointDir);
    }
    const needed = new Set<string>();
    const mark = (dir: string | undefined) => {
      // A chain of backing disks: each checkpoint keeps the one below it.
      while (dir && !needed.has(dir)) {
        needed.add(dir);
        dir = backing.get(dir);
      }
    };
    for (const dir of referenced) mark(dir);
    for (const dir of this.pinned.keys()) mark(dir);
    for (const { dir, keep } of all) if (keep && complete.has(dir)) mark(dir);
    const removed: string[] = [];
    for (const { dir } of all) {
      if (needed.has(dir)) continue;
      await this.remove(dir);
      removed.push(dir);
    }
    return removed;
  }
}

async function listDirs(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isDirectory()).map((e) => e.name);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
