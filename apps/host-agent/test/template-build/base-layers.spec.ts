import { mkdtempSync, readdirSync, rmSync, statSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BaseLayerCancelledError,
  BaseLayersConfig,
  BaseLayerUserError,
  ImageNotFoundError,
  InvalidImageReferenceError,
  RegistryAuthError,
  RegistryUnreachableError,
  UnsupportedBaseImageError,
  type BaseLayers,
} from '../../src/template-build/base-layers';
import { baseLayersFor, buildAndPushImage, ext4Cat, ext4Exists, freePort, makeRuntimeTemplate, run, startRegistry } from './base-layers-fixtures';

// Real tools end to end: Debian's docker-registry on 127.0.0.1 (htpasswd auth), an image built with umoci and
// pushed with skopeo, pulled and unpacked by BaseLayers, checked inside the ext4 result with debugfs (never mounted).
jest.setTimeout(180_000);

const USER = 'kiln';
const PASSWORD = 'registry-secret';
const creds = { username: USER, password: PASSWORD };
const noLog = () => undefined;

describe('BaseLayers (OCI images from a registry)', () => {
  let root: string;
  let dataDir: string;
  let registry: { address: string; stop: () => Promise<void> };
  let layers: BaseLayers;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'kiln-base-layers-'));
    dataDir = join(root, 'data');
    makeRuntimeTemplate(dataDir);
    registry = await startRegistry(join(root, 'registry'), USER, PASSWORD);
    mkdirSync(join(root, 'image'));
    buildAndPushImage(join(root, 'image'), `docker://${registry.address}/kiln/test:v1`, `${USER}:${PASSWORD}`, 'one');
    mkdirSync(join(root, 'image2'));
    buildAndPushImage(join(root, 'image2'), `docker://${registry.address}/kiln/other:v1`, `${USER}:${PASSWORD}`, 'two');
    layers = baseLayersFor(new BaseLayersConfig(dataDir));
  });

  afterAll(async () => {
    await registry?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  const workDirs = () => readdirSync(join(dataDir, 'build-cache/bases')).filter((name) => name.startsWith('.'));

  it('pulls, unpacks (whiteouts applied), injects the Kiln runtime and carries the image config', async () => {
    const lines: string[] = [];
    const layer = await layers.prepare(`${registry.address}/kiln/test:v1`, creds, (line) => lines.push(line), new AbortController().signal);

    expect(layer.key).toMatch(/^[a-f0-9]{64}$/);
    expect(layer.rootfsPath).toBe(join(dataDir, 'build-cache/bases', layer.key, 'rootfs.ext4'));
    expect(statSync(layer.rootfsPath).mode & 0o777).toBe(0o444);
    expect(layer.config).toEqual({
      env: { GREETING: 'hello world', PATH: '/usr/local/bin:/usr/bin:/bin' },
      workdir: '/srv',
      user: 'app',
      entrypoint: ['/bin/sh', '-c'],
      cmd: ['echo hi'],
    });

    const image = layer.rootfsPath;
    expect(ext4Exists(image, '/gone.txt')).toBe(false); // the upper layer's whiteout
    expect(ext4Cat(image, '/data/lower.txt')).toBe('lower one\n');
    expect(ext4Cat(image, '/srv/upper.txt')).toBe('upper one\n');
    for (const path of ['/opt/kiln/init', '/opt/kiln/guest-agent/guest-agent.js', '/opt/kiln/runtime/bin/node', '/opt/kiln/runtime/lib/libc.so.6',
      '/opt/kiln/runtime/lib/ld-linux-x86-64.so.2', '/opt/kiln/bin/busybox', '/opt/kiln/bin/tini']) {
      expect([path, ext4Exists(image, path)]).toEqual([path, true]);
    }
    expect(ext4Cat(image, '/opt/kiln/init')).toContain('exec /opt/kiln/runtime/bin/node --jitless /opt/kiln/guest-agent/guest-agent.js --port 49983');
    // uid 1000 belongs to the image's `app`: `user` gets the next free one.
    expect(ext4Cat(image, '/etc/passwd')).toContain('user:x:1001:1001::/home/user:/bin/sh');
    expect(ext4Exists(image, '/home/user')).toBe(true);
    expect(ext4Cat(image, '/etc/resolv.conf')).toBe('');
    expect(lines.join('\n')).toContain('unpacking 2 layers');

    // The image has no libc at all: the runtime's node must still run, through its own loader and libraries.
    const tree = join(root, 'tree');
    mkdirSync(tree);
    run('debugfs', ['-R', `rdump / ${tree}`, image]);
    expect(run('chroot', [tree, '/opt/kiln/runtime/bin/node', '-e', 'process.stdout.write(process.execPath + " " + process.version)'])).toBe(
      `/opt/kiln/runtime/bin/node ${process.version}`,
    );
    run('chroot', [tree, '/opt/kiln/bin/busybox', 'sh', '-n', '/opt/kiln/init']);
    rmSync(tree, { recursive: true, force: true });
    expect(workDirs()).toEqual([]);
  });

  it('reuses the cached layer for the same image, and concurrent prepares of a new image share one job', async () => {
    const started = Date.now();
    const lines: string[] = [];
    const again = await layers.prepare(`${registry.address}/kiln/test:v1`, creds, (line) => lines.push(line), new AbortController().signal);
    expect(lines.join('\n')).toContain('cached');
    expect(Date.now() - started).toBeLessThan(10_000);
    const first = await layers.prepare(`${registry.address}/kiln/test:v1`, creds, noLog, new AbortController().signal);
    expect(again.key).toBe(first.key);

    const logsA: string[] = [];
    const logsB: string[] = [];
    const [a, b] = await Promise.all([
      layers.prepare(`${registry.address}/kiln/other:v1`, creds, (line) => logsA.push(line), new AbortController().signal),
      layers.prepare(`${registry.address}/kiln/other:v1`, creds, (line) => logsB.push(line), new AbortController().signal),
    ]);
    expect(a).toEqual(b);
    expect(a.key).not.toBe(first.key);
    expect([...logsA, ...logsB].filter((line) => line.includes('joining')).length).toBe(1);
    // One pull: a joined caller sees the shared job's log lines from the moment it joined, never a second pull.
    for (const logs of [logsA, logsB]) expect(logs.filter((line) => line.startsWith('pulling')).length).toBeLessThanOrEqual(1);
    expect(logsA.some((line) => line.startsWith('pulling')) || logsB.some((line) => line.startsWith('pulling'))).toBe(true);
    expect(ext4Cat(a.rootfsPath, '/srv/upper.txt')).toBe('upper two\n');
  });

  it('pulls references without a registry from the configured mirror of the default registry', async () => {
    const viaMirror = baseLayersFor(new BaseLayersConfig(dataDir, 'docker.io', registry.address));
    const lines: string[] = [];
    const layer = await viaMirror.prepare('kiln/test:v1', creds, (line) => lines.push(line), new AbortController().signal);
    expect(lines.join('\n')).toContain(`base layer kiln/test:v1: cached`);
    const direct = await layers.prepare(`${registry.address}/kiln/test:v1`, creds, noLog, new AbortController().signal);
    expect(layer.key).toBe(direct.key); // same manifest digest, same layer
  });

  it('a cancelled prepare rejects at once and leaves no work dir', async () => {
    rmSync(join(dataDir, 'build-cache/bases'), { recursive: true, force: true });
    const controller = new AbortController();
    const lines: string[] = [];
    const pending = layers.prepare(`${registry.address}/kiln/other:v1`, creds, (line) => {
      lines.push(line);
      if (line.startsWith('pulling')) controller.abort();
    }, controller.signal);
    await expect(pending).rejects.toBeInstanceOf(BaseLayerCancelledError);
    const deadline = Date.now() + 15_000;
    while (workDirs().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(workDirs()).toEqual([]);
    expect(readdirSync(join(dataDir, 'build-cache/bases'))).toEqual([]);
  });

  it('credentials are passed to the registry: none or wrong ones are refused as a user error', async () => {
    const image = `${registry.address}/kiln/test:v1`;
    const none = layers.prepare(image, undefined, noLog, new AbortController().signal);
    await expect(none).rejects.toBeInstanceOf(RegistryAuthError);
    await expect(none).rejects.toThrow(`registry ${registry.address} refused the credentials`);
    const wrong = layers.prepare(image, { username: USER, password: 'nope' }, noLog, new AbortController().signal);
    await expect(wrong).rejects.toBeInstanceOf(RegistryAuthError);
    await expect(wrong).rejects.toBeInstanceOf(BaseLayerUserError);
    await expect(wrong).rejects.toMatchObject({ step: '0' });
  });

  it('bad references, unknown images, unreachable registries and unsupported suites are user errors', async () => {
    const signal = new AbortController().signal;
    const unknownTag = layers.prepare(`${registry.address}/kiln/test:nope`, creds, noLog, signal);
    await expect(unknownTag).rejects.toBeInstanceOf(ImageNotFoundError);
    await expect(unknownTag).rejects.toThrow(`${registry.address}/kiln/test:nope: no such image on ${registry.address}`);
    await expect(layers.prepare(`${registry.address}/kiln/absent:v1`, creds, noLog, signal)).rejects.toBeInstanceOf(ImageNotFoundError);
    await expect(layers.prepare('Not A/Valid//ref', undefined, noLog, signal)).rejects.toBeInstanceOf(InvalidImageReferenceError);
    const closed = await freePort();
    const unreachable = layers.prepare(`127.0.0.1:${closed}/kiln/test:v1`, undefined, noLog, signal);
    await expect(unreachable).rejects.toBeInstanceOf(RegistryUnreachableError);
    await expect(unreachable).rejects.toThrow(`registry 127.0.0.1:${closed} is unreachable`);
    const ubuntu = layers.prepare('ubuntu:22.04', undefined, noLog, signal);
    await expect(ubuntu).rejects.toBeInstanceOf(UnsupportedBaseImageError);
    await expect(ubuntu).rejects.toThrow(/jammy.*Debian mirror/);
    await expect(layers.prepare('debian:potato', undefined, noLog, signal)).rejects.toBeInstanceOf(UnsupportedBaseImageError);
    expect(workDirs()).toEqual([]);
  });
});
