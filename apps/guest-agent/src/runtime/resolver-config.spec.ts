import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ResolverConfig } from './resolver-config';

describe('ResolverConfig (a temp file standing in for /etc/resolv.conf)', () => {
  let dir: string;
  let path: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-resolv-'));
    path = join(dir, 'resolv.conf');
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes the resolvers, one nameserver line each, replacing the file whole', async () => {
    await writeFile(path, 'nameserver 127.0.0.53\n');
    expect(await new ResolverConfig(true, path).apply(['8.8.8.8', '1.1.1.1'])).toBe(true);
    expect((await readFile(path, 'utf8')).split('\n').filter((l) => l.startsWith('nameserver'))).toEqual(['nameserver 8.8.8.8', 'nameserver 1.1.1.1']);
    expect((await stat(path)).mode & 0o777).toBe(0o644);
  });

  it('leaves a file that already holds the resolvers untouched (what a clone of a template finds)', async () => {
    await new ResolverConfig(true, path).apply(['8.8.8.8']);
    const before = await stat(path);
    const fresh = new ResolverConfig(true, path);
    expect(await fresh.apply(['8.8.8.8'])).toBe(false);
    expect((await stat(path)).ino).toBe(before.ino);
  });

  it('remembers what it wrote, so the same resolvers again cost no file access and keep a user edit', async () => {
    const resolver = new ResolverConfig(true, path);
    await resolver.apply(['8.8.8.8']);
    await writeFile(path, 'nameserver 10.0.0.2\n');
    expect(await resolver.apply(['8.8.8.8'])).toBe(false);
    expect(await readFile(path, 'utf8')).toBe('nameserver 10.0.0.2\n');
    // Different resolvers from the host do replace it.
    expect(await resolver.apply(['1.1.1.1'])).toBe(true);
    expect(await readFile(path, 'utf8')).toContain('nameserver 1.1.1.1\n');
  });

  it('does nothing without guest duties', async () => {
    expect(await new ResolverConfig(false, path).apply(['8.8.8.8'])).toBe(false);
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
