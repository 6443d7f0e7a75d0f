import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { ArtifactIntegrityError, ArtifactTooLargeError, InvalidArtifactKeyError } from './artifacts.errors';
import { LocalArtifactStore } from './local-artifact-store';

const sha = (data: string) => createHash('sha256').update(data).digest('hex');

describe('LocalArtifactStore', () => {
  let root: string;
  let store: LocalArtifactStore;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'artifacts-'));
    store = new LocalArtifactStore(root);
  });
  afterEach(() => rm(root, { recursive: true, force: true }));

  it('records size and sha256 of what it wrote and lists keys under a prefix', async () => {
    const info = await store.write('templates/t1/b1/rootfs.ext4', Readable.from([Buffer.from('hello '), Buffer.from('world')]));
    expect(info).toEqual({ key: 'templates/t1/b1/rootfs.ext4', bytes: 11, sha256: sha('hello world') });
    expect(await store.stat('templates/t1/b1/rootfs.ext4')).toEqual(info);
    await store.write('templates/t1/b1/template.json', Readable.from(['{}']));
    expect(await store.list('templates/t1/')).toEqual(['templates/t1/b1/rootfs.ext4', 'templates/t1/b1/template.json']);
    expect(await store.stat('templates/t1/b1/missing')).toBeUndefined();
  });

  it('fetches a verified copy and refuses bytes that no longer match their record', async () => {
    await store.write('files/team/abc.tar', Readable.from(['payload']));
    const out = join(root, 'out', 'copy.tar');
    await store.fetchTo('files/team/abc.tar', out);
    expect(await readFile(out, 'utf8')).toBe('payload');
    // Tamper with the stored bytes: the fetch fails and leaves nothing at the destination.
    await writeFile(join(root, 'files/team/abc.tar'), 'PAYLOAD', { mode: 0o644 }).catch(async () => {
      await rm(join(root, 'files/team/abc.tar'));
      await writeFile(join(root, 'files/team/abc.tar'), 'PAYLOAD');
    });
    const second = join(root, 'out', 'second.tar');
    await expect(store.fetchTo('files/team/abc.tar', second)).rejects.toBeInstanceOf(ArtifactIntegrityError);
    expect(await readdir(join(root, 'out'))).toEqual(['copy.tar']);
    await expect(store.fetchTo('files/team/abc.tar', second, sha('other'))).rejects.toBeInstanceOf(ArtifactIntegrityError);
  });

  it('refuses keys that could leave the store and writes past the size limit', async () => {
    for (const key of ['../x', '/etc/passwd', 'a//b', 'a/../b', '', 'a/.hidden']) {
      await expect(store.write(key, Readable.from(['x']))).rejects.toBeInstanceOf(InvalidArtifactKeyError);
    }
    await expect(store.write('files/t/big', Readable.from([Buffer.alloc(10)]), { maxBytes: 5 })).rejects.toBeInstanceOf(ArtifactTooLargeError);
    expect(await store.stat('files/t/big')).toBeUndefined();
    expect(await store.list('files/')).toEqual([]);
  });

  it('copies an artifact under a new key with its record, without reading it again', async () => {
    const info = await store.write('templates/t1/b1/rootfs.ext4', Readable.from(['disk bytes']));
    expect(await store.copy('templates/t1/b1/rootfs.ext4', 'templates/t1/b2/rootfs.ext4')).toEqual({ ...info, key: 'templates/t1/b2/rootfs.ext4' });
    await store.removePrefix('templates/t1/b1/');
    expect(await store.stat('templates/t1/b2/rootfs.ext4')).toEqual({ ...info, key: 'templates/t1/b2/rootfs.ext4' });
    const out = join(root, 'out', 'copy');
    await store.fetchTo('templates/t1/b2/rootfs.ext4', out);
    expect(await readFile(out, 'utf8')).toBe('disk bytes');
    await expect(store.copy('templates/t1/b1/rootfs.ext4', 'templates/t1/b3/x')).rejects.toThrow('not found');
  });

  it('removes a prefix', async () => {
    await store.write('templates/t1/b1/a', Readable.from(['1']));
    await store.write('templates/t2/b1/a', Readable.from(['2']));
    await store.removePrefix('templates/t1/');
    expect(await store.list('templates/')).toEqual(['templates/t2/b1/a']);
  });
});
