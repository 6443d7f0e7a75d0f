import { spawnSync } from 'node:child_process';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadGuestAddon, type GuestAddon } from '../runtime/guest-kernel';
import {
  FileMetadataStore,
  InvalidMetadataError,
  MAX_METADATA_KEY_BYTES,
  metadataFromHeaders,
  MetadataUnsupportedError,
  validateMetadata,
} from './file-metadata';

describe('validateMetadata (envd rules for X-Metadata-* uploads)', () => {
  it('accepts printable ASCII keys and values within the limits, and an empty set', () => {
    expect(() => validateMetadata({ author: 'mish', "x!#$%&'*+-.^_`|~": 'a value with spaces ~' })).not.toThrow();
    expect(() => validateMetadata({})).not.toThrow();
    expect(() => validateMetadata({ ['k'.repeat(MAX_METADATA_KEY_BYTES)]: '' })).not.toThrow();
  });

  it.each([
    [{ '': 'v' }, /must not be empty/],
    [{ ['k'.repeat(MAX_METADATA_KEY_BYTES + 1)]: 'v' }, /exceeds 246 bytes/],
    [{ good: 'bad\nvalue' }, /non-printable-ASCII character 0x0a at offset 3/],
    [{ good: 'caf\u00e9' }, /0xe9/],
    [{ 'bad\tkey': 'v' }, /metadata key contains/],
    // 9 bytes of prefix + 1 + 4000 per key: two keys are over 4096.
    [{ a: 'v'.repeat(4000), b: 'v'.repeat(4000) }, /total metadata size 8020 exceeds 4096 bytes/],
  ])('refuses %j', (metadata, message) => {
    expect(() => validateMetadata(metadata)).toThrow(InvalidMetadataError);
    expect(() => validateMetadata(metadata)).toThrow(message);
  });
});

describe('metadataFromHeaders', () => {
  it('strips the prefix, lower-cases keys, keeps the first of repeated headers and ignores other headers', () => {
    const raw = ['Content-Type', 'application/octet-stream', 'X-Metadata-Author', 'mish', 'x-metadata-PURPOSE', 'upload', 'X-Metadata-author', 'second', 'X-Metadata-', 'no key', 'X-Other', 'x'];
    expect(metadataFromHeaders(raw)).toEqual({ author: 'mish', purpose: 'upload' });
  });

  it('keeps a key named like an Object.prototype property as plain data', () => {
    const metadata = metadataFromHeaders(['X-Metadata-__proto__', 'v', 'X-Metadata-constructor', 'w']);
    expect(Object.keys(metadata).sort()).toEqual(['__proto__', 'constructor']);
    expect(Object.getPrototypeOf(metadata)).toBe(Object.prototype);
  });
});

describe('FileMetadataStore on real extended attributes', () => {
  let addon: GuestAddon;
  let dir: string;
  let store: FileMetadataStore;
  const python = (code: string) => spawnSync('python3', ['-c', code], { encoding: 'utf8' });

  beforeAll(async () => {
    addon = loadGuestAddon();
    store = new FileMetadataStore(addon);
    dir = await mkdtemp(join(tmpdir(), 'kiln-metadata-'));
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function replaceThroughFd(path: string, metadata: Record<string, string>): Promise<void> {
    const file = await open(path, 'r+');
    try {
      await store.replace(file.fd, path, metadata);
    } finally {
      await file.close();
    }
  }

  it('stores a set as user.e2b.* attributes and reads it back', async () => {
    const path = join(dir, 'a.txt');
    await writeFile(path, 'a');
    await replaceThroughFd(path, { author: 'mish', purpose: 'upload' });
    expect((await addon.listXattrs(path)).sort()).toEqual(['user.e2b.author', 'user.e2b.purpose']);
    expect((await addon.getXattr(path, 'user.e2b.author')).toString()).toBe('mish');
    expect(await store.read(path)).toEqual({ author: 'mish', purpose: 'upload' });
  });

  it('replaces the whole set: absent keys go, other user.* attributes stay; an empty set clears', async () => {
    const path = join(dir, 'b.txt');
    await writeFile(path, 'b');
    await addon.setXattr(path, 'user.other-tool', 'keep me');
    await replaceThroughFd(path, { one: '1', two: '2' });
    await replaceThroughFd(path, { two: 'zwei', three: '3' });
    expect(await store.read(path)).toEqual({ two: 'zwei', three: '3' });
    await replaceThroughFd(path, {});
    expect(await store.read(path)).toBeUndefined();
    expect(await addon.listXattrs(path)).toEqual(['user.other-tool']);
  });

  it('surfaces attributes set by other tools under user.e2b., skipping values that are not UTF-8', async () => {
    const path = join(dir, 'c.txt');
    await writeFile(path, 'c');
    const set = python(`import os; os.setxattr(${JSON.stringify(path)}, 'user.e2b.author', b'mish'); os.setxattr(${JSON.stringify(path)}, 'user.e2b.binary', b'\\xff\\xfe')`);
    expect(set.stderr).toBe('');
    expect(await store.read(path)).toEqual({ author: 'mish' });
  });

  it('reads nothing, without failing, for a missing path or a filesystem without attributes', async () => {
    expect(await store.read(join(dir, 'missing'))).toBeUndefined();
    expect(await store.read('/proc/self/status')).toBeUndefined();
  });

  it('refuses a non-empty set without the native addon instead of dropping it', async () => {
    const bare = new FileMetadataStore(undefined);
    const path = join(dir, 'd.txt');
    await writeFile(path, 'd');
    const file = await open(path, 'r+');
    try {
      await expect(bare.replace(file.fd, path, { k: 'v' })).rejects.toBeInstanceOf(MetadataUnsupportedError);
      await expect(bare.replace(file.fd, path, {})).resolves.toBeUndefined();
    } finally {
      await file.close();
    }
    expect(await bare.read(path)).toBeUndefined();
  });
});
