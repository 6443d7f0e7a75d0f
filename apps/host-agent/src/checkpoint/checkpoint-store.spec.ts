import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CheckpointCorruptError, CheckpointNotFoundError, InvalidCheckpointIdError } from './checkpoint.errors';
import { CheckpointStore, type CheckpointManifest } from './checkpoint-store';

const manifestBase = (id: string, backing?: string): Omit<CheckpointManifest, 'files' | 'formatVersion'> => ({
  id,
  kind: 'fork',
  sourceSandboxId: 'source',
  teamId: 'team',
  templateId: 'base',
  buildId: 'b1',
  keepMemory: true,
  vm: { vcpus: 1, memoryMib: 512, kernelPath: '/k', initrdPath: '/i', kernelArgs: 'console=ttyS0', memoryFilePath: '/m', memoryFileIdentity: 'zero:1', guestMac: '02:fc:00:00:00:06', accelerator: 'tcg', guestAgentPort: 49983 },
  ...(backing ? { diskBackingCheckpointDir: backing } : {}),
  createdAt: new Date().toISOString(),
  timings: {},
});

describe('CheckpointStore', () => {
  let root: string;
  let store: CheckpointStore;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'kiln-checkpoints-'));
    store = new CheckpointStore(root);
  });

  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  async function sealedFork(backing?: string): Promise<string> {
    const dir = await store.newForkDir();
    await writeFile(join(dir, 'device-state'), 'state');
    await writeFile(join(dir, 'disk.qcow2'), 'disk');
    await store.seal(dir, manifestBase(dir, backing), { 'device-state': {}, 'disk.qcow2': {} });
    store.unpin(dir);
    return dir;
  }

  it('seals a manifest with every file hashed, verifies it, and names the file that changed', async () => {
    const dir = await store.newForkDir();
    await writeFile(join(dir, 'device-state'), 'state');
    await writeFile(join(dir, '..', 'layer.qcow2'), 'layer');
    const { manifest, manifestSha256 } = await store.seal(dir, manifestBase('f'), { 'device-state': {}, 'disk.qcow2': { path: '../layer.qcow2' } });
    expect(manifestSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(manifest.files['device-state']).toEqual({ bytes: 5, sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(manifest.files['disk.qcow2'].path).toBe('../layer.qcow2');
    const read = await store.read(dir);
    await expect(store.verify(dir, read)).resolves.toBeUndefined();

    // Same size, other bytes (and a fresh store: no verification remembered).
    await writeFile(join(dir, '..', 'layer.qcow2'), 'LAYER');
    await expect(new CheckpointStore(root).verify(dir, read)).rejects.toThrow(new CheckpointCorruptError(`checkpoint f: disk.qcow2 does not match its sha256 (corrupted)`));
    await writeFile(join(dir, 'device-state'), 'st');
    await expect(new CheckpointStore(root).verify(dir, read)).rejects.toThrow(/device-state has 2 bytes, its manifest says 5/);
    await rm(join(dir, 'device-state'));
    await expect(new CheckpointStore(root).verify(dir, read)).rejects.toThrow(/device-state is missing/);
  });

  it('a directory without a manifest is no checkpoint; a manifest of another format is refused', async () => {
    const dir = await store.newForkDir();
    await expect(store.read(dir)).rejects.toBeInstanceOf(CheckpointNotFoundError);
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ formatVersion: 99 }));
    await expect(store.read(dir)).rejects.toThrow(/format 99/);
    await writeFile(join(dir, 'manifest.json'), '{');
    await expect(store.read(dir)).rejects.toBeInstanceOf(CheckpointCorruptError);
  });

  it('rejects snapshot ids that are not plain names', () => {
    expect(() => store.snapshotDir('../etc')).toThrow(InvalidCheckpointIdError);
    expect(() => store.snapshotDir('A')).toThrow(InvalidCheckpointIdError);
    expect(store.snapshotDir('my-snap-1')).toBe(join(root, 'snapshots', 'my-snap-1'));
  });

  it('collects fork checkpoints nobody backs onto, keeps referenced ones and the chains below them, and pinned ones', async () => {
    const bottom = await sealedFork();
    const middle = await sealedFork(bottom);
    const unused = await sealedFork();
    const filling = await store.newForkDir(); // pinned, no manifest yet
    const abandoned = join(store.forksDir, 'fhalfmade');
    await mkdir(abandoned, { recursive: true });

    const removed = await store.collectGarbage([middle]);
    expect(removed.sort()).toEqual([abandoned, unused].sort());
    expect((await readdir(store.forksDir)).sort()).toEqual([bottom, middle, filling].map((d) => d.slice(store.forksDir.length + 1)).sort());

    store.unpin(filling);
    expect(await store.collectGarbage([])).toHaveLength(3);
    expect(await readdir(store.forksDir)).toEqual([]);
  });

  it('keeps a named snapshot until it is deleted, then until the last sandbox backing onto it is gone', async () => {
    const dir = store.snapshotDir('snap');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'disk.qcow2'), 'disk');
    await store.seal(dir, { ...manifestBase('snap'), kind: 'snapshot' }, { 'disk.qcow2': {} });
    expect(await store.collectGarbage([])).toEqual([]);
    expect(await store.snapshotIds()).toEqual(['snap']);

    expect(await store.markDeleted(dir)).toBe(true);
    expect(await store.markDeleted(dir)).toBe(false);
    expect(await store.snapshotIds()).toEqual([]);
    expect(await store.collectGarbage([dir])).toEqual([]);
    expect(await store.collectGarbage([])).toEqual([dir]);
    expect(await store.markDeleted(dir)).toBe(false);
  });
});
