import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CorruptTemplateError, InvalidTemplateIdError, TemplateNotFoundError } from './template.errors';
import { TemplateStore } from './template-store';

describe('TemplateStore', () => {
  let dataDir: string;
  let store: TemplateStore;

  async function addBuild(templateId: string, buildId: string, manifest: Record<string, unknown> = {}): Promise<string> {
    const dir = join(dataDir, 'templates', templateId, buildId);
    await mkdir(dir, { recursive: true });
    for (const file of ['vmlinuz', 'initramfs.cpio.gz', 'rootfs.ext4']) await writeFile(join(dir, file), file);
    await writeFile(
      join(dir, 'template.json'),
      JSON.stringify({
        templateId,
        buildId,
        vcpus: 1,
        memoryMib: 512,
        kernel: 'vmlinuz',
        initrd: 'initramfs.cpio.gz',
        rootfs: 'rootfs.ext4',
        rootfsFormat: 'raw',
        kernelArgs: 'console=ttyS0',
        kernelRelease: '6.1.0-56-cloud-amd64',
        agentPort: 49983,
        ...manifest,
      }),
    );
    return dir;
  }

  beforeEach(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'kiln-templates-'));
    store = new TemplateStore({ dataDir });
  });
  afterEach(() => rm(dataDir, { recursive: true, force: true }));

  it('resolves a template to its current build with absolute paths', async () => {
    await addBuild('base', 'aaaa');
    const dir = await addBuild('base', 'bbbb');
    await symlink('bbbb', join(dataDir, 'templates/base/current'));
    const build = await store.resolve('base');
    expect(build).toMatchObject({
      templateId: 'base',
      buildId: 'bbbb',
      kernelPath: join(dir, 'vmlinuz'),
      rootfs: { path: join(dir, 'rootfs.ext4'), format: 'raw' },
      snapshotDir: join(dir, 'snapshot'),
    });
    expect((await store.resolve('base', 'aaaa')).buildId).toBe('aaaa');
    expect(await store.list()).toEqual([{ templateId: 'base', currentBuildId: 'bbbb', buildIds: ['aaaa', 'bbbb'] }]);
  });

  it('lists a template whose directory is a link to one elsewhere (built-in templates shared by data dirs), not a link to a file', async () => {
    const shared = await mkdtemp(join(tmpdir(), 'kiln-shared-templates-'));
    try {
      const elsewhere = new TemplateStore({ dataDir: shared });
      const dir = join(shared, 'templates', 'base', 'cccc');
      await mkdir(dir, { recursive: true });
      await symlink('cccc', join(shared, 'templates/base/current'));
      await mkdir(join(dataDir, 'templates'), { recursive: true });
      await symlink(join(shared, 'templates', 'base'), join(dataDir, 'templates', 'base'));
      await writeFile(join(shared, 'a-file'), 'x');
      await symlink(join(shared, 'a-file'), join(dataDir, 'templates', 'not-a-template'));
      expect(await store.list()).toEqual([{ templateId: 'base', currentBuildId: 'cccc', buildIds: ['cccc'] }]);
      expect(await elsewhere.list()).toEqual(await store.list());
    } finally {
      await rm(shared, { recursive: true, force: true });
    }
  });

  it('rejects ids that are not plain names', async () => {
    await expect(store.resolve('../etc')).rejects.toBeInstanceOf(InvalidTemplateIdError);
    await expect(store.resolve('base', 'a/b')).rejects.toBeInstanceOf(InvalidTemplateIdError);
  });

  it('reports unknown templates and builds as not found', async () => {
    await expect(store.resolve('nope')).rejects.toBeInstanceOf(TemplateNotFoundError);
    await addBuild('base', 'aaaa');
    await expect(store.resolve('base')).rejects.toBeInstanceOf(TemplateNotFoundError);
    await expect(store.resolve('base', 'zzzz')).rejects.toBeInstanceOf(TemplateNotFoundError);
  });

  it('refuses a manifest that points outside its build dir', async () => {
    await addBuild('base', 'aaaa', { kernel: '../../../../etc/passwd' });
    await expect(store.resolve('base', 'aaaa')).rejects.toBeInstanceOf(CorruptTemplateError);
  });
});
