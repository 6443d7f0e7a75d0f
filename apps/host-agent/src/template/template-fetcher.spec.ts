import { chmod, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { LocalArtifactStore } from '@kiln/artifacts';
import { TemplateArtifactCorruptError, TemplateFetchError, TemplateNotFoundError } from './template.errors';
import { TemplateFetcher } from './template-fetcher';
import { TemplateStore } from './template-store';

/** A host's template store over a temp data dir, fetching from a temp artifact store (no VM involved). */
describe('TemplateStore with a TemplateFetcher (a build the host lacks comes from the artifact store)', () => {
  let root: string;
  let dataDir: string;
  let artifacts: LocalArtifactStore;
  let store: TemplateStore;
  const templateId = 'k3xq9v0m2b7c5n1p8r4t';
  const buildId = '6f1f2a8e-3c4b-4d5e-9f60-7a8b9c0d1e2f';

  const files: Record<string, string> = {
    vmlinuz: 'kernel image',
    'initramfs.cpio.gz': 'initramfs',
    'rootfs.ext4': 'a filesystem '.repeat(1000),
  };
  const manifest = (id = buildId) =>
    JSON.stringify({
      templateId,
      buildId: id,
      vcpus: 2,
      memoryMib: 1024,
      kernel: 'vmlinuz',
      initrd: 'initramfs.cpio.gz',
      rootfs: 'rootfs.ext4',
      rootfsFormat: 'raw',
      kernelArgs: 'console=ttyS0',
      kernelRelease: '6.1.0-56-cloud-amd64',
      agentPort: 49983,
      envs: { GREETING: 'hi' },
      workdir: '/srv',
      user: 'user',
    });

  /** Publishes a build as the host that built it does: `templates/<templateId>/<buildId>/<file>`. */
  async function publish(id = buildId, withManifest = true): Promise<void> {
    const all = { ...files, ...(withManifest ? { 'template.json': manifest(id) } : {}) };
    for (const [name, body] of Object.entries(all)) await artifacts.write(`templates/${templateId}/${id}/${name}`, Readable.from([Buffer.from(body)]));
  }

  const templateDirEntries = () => readdir(join(dataDir, 'templates', templateId)).catch(() => [] as string[]);

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'kiln-template-fetch-'));
    dataDir = join(root, 'data');
    artifacts = new LocalArtifactStore(join(root, 'artifacts'));
    store = new TemplateStore({ dataDir }, new TemplateFetcher(join(dataDir, 'templates'), artifacts));
  });
  afterEach(() => rm(root, { recursive: true, force: true }));

  it('fetches a missing build on first use, verified, into <data>/templates/<templateId>/<buildId>/, and reports it as cached', async () => {
    await publish();
    const build = await store.resolve(templateId, buildId);
    expect(build).toMatchObject({ templateId, buildId, dir: join(dataDir, 'templates', templateId, buildId), vcpus: 2, memoryMib: 1024, workdir: '/srv' });
    for (const [name, body] of Object.entries(files)) expect(await readFile(join(build.dir, name), 'utf8')).toBe(body);
    // No staging directory left; the template's current build is the fetched one, so HostInfo lists the template.
    expect((await templateDirEntries()).sort()).toEqual([buildId, 'current']);
    expect(await readlink(join(dataDir, 'templates', templateId, 'current'))).toBe(buildId);
    expect(await store.list()).toEqual([{ templateId, currentBuildId: buildId, buildIds: [buildId] }]);
    // Resolved again, it is read from disk.
    const fetchTo = jest.spyOn(artifacts, 'fetchTo');
    await store.resolve(templateId, buildId);
    expect(fetchTo).not.toHaveBeenCalled();
  });

  it('shares one fetch between concurrent first uses', async () => {
    await publish();
    const fetchTo = jest.spyOn(artifacts, 'fetchTo');
    // A second store over the same data dir (the snapshot module has its own) shares the fetch too.
    const other = new TemplateStore({ dataDir }, new TemplateFetcher(join(dataDir, 'templates'), artifacts));
    const builds = await Promise.all([store.resolve(templateId, buildId), store.resolve(templateId, buildId), other.resolve(templateId, buildId)]);
    expect(builds.map((b) => b.dir)).toEqual(Array(3).fill(join(dataDir, 'templates', templateId, buildId)));
    expect(fetchTo).toHaveBeenCalledTimes(Object.keys(files).length + 1);
  });

  it('refuses a build whose artifact was tampered with, with a typed error, leaving nothing behind', async () => {
    await publish();
    const rootfs = artifacts.pathOf(`templates/${templateId}/${buildId}/rootfs.ext4`);
    await chmod(rootfs, 0o644);
    await writeFile(rootfs, 'a filesystem '.repeat(999) + 'a filesystEm ');

    const refused = await store.resolve(templateId, buildId).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(TemplateArtifactCorruptError);
    // To the create path the host still lacks the build (FAILED_PRECONDITION), naming the file.
    expect(refused).toBeInstanceOf(TemplateNotFoundError);
    expect((refused as Error).message).toMatch(/rootfs\.ext4/);
    expect(await templateDirEntries()).toEqual([]);
  });

  it('refuses a build published without its template.json', async () => {
    await publish(buildId, false);
    await expect(store.resolve(templateId, buildId)).rejects.toBeInstanceOf(TemplateFetchError);
    expect(await templateDirEntries()).toEqual([]);
  });

  it('answers not found, creating nothing, for a build the artifact store does not hold either', async () => {
    const missing = await store.resolve(templateId, buildId).catch((error: unknown) => error);
    expect(missing).toBeInstanceOf(TemplateNotFoundError);
    expect(missing).not.toBeInstanceOf(TemplateFetchError);
    expect(await templateDirEntries()).toEqual([]);
  });

  it('leaves the template’s existing current build alone, and never fetches for "the current build"', async () => {
    const older = 'b0000000-0000-4000-8000-000000000000';
    const olderDir = join(dataDir, 'templates', templateId, older);
    await mkdir(olderDir, { recursive: true });
    for (const [name, body] of Object.entries(files)) await writeFile(join(olderDir, name), body);
    await writeFile(join(olderDir, 'template.json'), manifest(older));
    await symlink(older, join(dataDir, 'templates', templateId, 'current'));
    await publish();

    expect((await store.resolve(templateId)).buildId).toBe(older);
    expect((await store.resolve(templateId, buildId)).buildId).toBe(buildId);
    expect(await readlink(join(dataDir, 'templates', templateId, 'current'))).toBe(older);
  });
});
