import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BaseLayersConfig, type BaseLayers } from '../../src/template-build/base-layers';
import { baseLayersFor, ext4Cat, ext4Exists, makeRuntimeTemplate, run } from '../template-build/base-layers-fixtures';

// debian:<suite> bases with mmdebstrap from the host's Debian mirror. The .deb cache is the machine's shared one
// ($KILN_DATA_DIR/cache/debs, as tools/guest-image/build.sh uses), so only the first run downloads.
jest.setTimeout(15 * 60_000);

describe('BaseLayers (debian:<suite> with mmdebstrap)', () => {
  let root: string;
  let dataDir: string;
  let layers: BaseLayers;

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'kiln-base-layers-debian-'));
    dataDir = join(root, 'data');
    makeRuntimeTemplate(dataDir);
    const sharedCache = join(process.env.KILN_DATA_DIR ?? '/var/lib/kiln', 'cache');
    mkdirSync(sharedCache, { recursive: true });
    symlinkSync(sharedCache, join(dataDir, 'cache'));
    layers = baseLayersFor(new BaseLayersConfig(dataDir));
  });

  afterAll(() => {
    if (root) run('rm', ['-rf', '--one-file-system', root]);
  });

  it('debian:bookworm: minbase with bash, sudo and iproute2, the Kiln runtime and user `user`', async () => {
    const lines: string[] = [];
    const started = Date.now();
    const layer = await layers.prepare('debian:bookworm', undefined, (line) => lines.push(`${((Date.now() - started) / 1000).toFixed(1)}s ${line}`), new AbortController().signal);
    const seconds = Math.round((Date.now() - started) / 1000);
    process.stdout.write(`debian:bookworm base layer in ${seconds} s\n${lines.filter((line) => !/^\S+ (I: |Get:|Hit:)/.test(line) || /I: (downloading|extracting|installing|running|cleaning)/.test(line)).join('\n')}\n`);
    expect(layer.config).toEqual({ env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' }, cmd: ['bash'] });
    expect(ext4Cat(layer.rootfsPath, '/etc/debian_version')).toMatch(/^12\./);
    for (const path of ['/usr/bin/bash', '/usr/bin/sudo', '/usr/bin/ip', '/usr/bin/ps', '/usr/bin/setpriv', '/opt/kiln/init', '/opt/kiln/runtime/bin/node', '/opt/kiln/bin/tini']) {
      expect([path, ext4Exists(layer.rootfsPath, path)]).toEqual([path, true]);
    }
    expect(ext4Cat(layer.rootfsPath, '/etc/passwd')).toContain('user:x:1000:1000::/home/user:/bin/bash');
    expect(ext4Cat(layer.rootfsPath, '/etc/sudoers.d/user')).toBe('user ALL=(ALL) NOPASSWD:ALL\n');
    expect(ext4Exists(layer.rootfsPath, '/var/cache/apt/archives/bash_5.2.15-2+b7_amd64.deb')).toBe(false);

    const again: string[] = [];
    const cached = await layers.prepare('debian:bookworm', undefined, (line) => again.push(line), new AbortController().signal);
    expect(cached.key).toBe(layer.key);
    expect(again.join('\n')).toContain('cached');
    rmSync(join(dataDir, 'build-cache'), { recursive: true, force: true });
  });
});
