import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UnsupportedBaseImageError } from './base-layers.errors';
import { resolveInRoot } from './root-path';

describe('resolveInRoot', () => {
  let root: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'kiln-root-path-'));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it('keeps absolute and escaping symlinks of an untrusted image inside the rootfs', async () => {
    mkdirSync(join(root, 'usr/lib'), { recursive: true });
    symlinkSync('/etc', join(root, 'etc-abs'));
    mkdirSync(join(root, 'real-etc'));
    symlinkSync('../../../../real-etc', join(root, 'etc'));
    symlinkSync('usr/lib', join(root, 'lib'));
    symlinkSync('/lib/../../../x', join(root, 'opt'));
    expect(await resolveInRoot(root, '/etc/passwd')).toBe(join(root, 'real-etc/passwd'));
    expect(await resolveInRoot(root, '/etc-abs/shadow')).toBe(join(root, 'real-etc/shadow'));
    expect(await resolveInRoot(root, '/lib/x86_64-linux-gnu')).toBe(join(root, 'usr/lib/x86_64-linux-gnu'));
    expect(await resolveInRoot(root, '/opt/kiln')).toBe(join(root, 'x/kiln'));
    expect(await resolveInRoot(root, '/../../etc')).toBe(join(root, 'real-etc'));
  });

  it('refuses symlink loops', async () => {
    symlinkSync('b', join(root, 'a'));
    symlinkSync('a', join(root, 'b'));
    await expect(resolveInRoot(root, '/a/x')).rejects.toBeInstanceOf(UnsupportedBaseImageError);
  });
});
