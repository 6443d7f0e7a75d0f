import { execFile } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { COPY_SCRIPT, ENSURE_WORKDIR_SCRIPT } from './guest-scripts';

const run = promisify(execFile);

/**
 * The scripts run here with bash against temp directories, as root runs them in a build VM (the destination is just
 * a path). Owner checks use root and, where the host has one, the `nobody` account.
 */
describe('COPY in the build VM (Docker COPY semantics)', () => {
  let dir: string;
  let context: string;
  let archiveCount = 0;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-copy-spec-'));
    context = join(dir, 'context');
    await mkdir(join(context, 'app', 'lib'), { recursive: true });
    await writeFile(join(context, 'app.sh'), '#!/bin/sh\necho app\n', { mode: 0o755 });
    await writeFile(join(context, 'notes.txt'), 'notes');
    await writeFile(join(context, 'app', 'main.py'), 'print(1)');
    await writeFile(join(context, 'app', '.hidden'), 'h');
    await writeFile(join(context, 'app', 'lib', 'util.py'), 'x = 1');
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  async function copy(src: string, dest: string, extra: Record<string, string> = {}, gzip = false) {
    const archive = join(dir, `ctx-${archiveCount++}.tar${gzip ? '.gz' : ''}`);
    await run('tar', [gzip ? '-czf' : '-cf', archive, '-C', context, '.']);
    const result = await run('bash', ['-c', COPY_SCRIPT], {
      env: { PATH: process.env.PATH, TMPDIR: dir, KILN_ARCHIVE: archive, KILN_SRC: src, KILN_DEST: dest, KILN_WORKDIR: '', KILN_OWNER: '', KILN_MODE: '', ...extra },
    });
    // The archive is consumed (removed) and the extraction dir with it.
    await expect(stat(archive)).rejects.toThrow();
    expect((await readdir(dir)).filter((n) => n.startsWith('kiln-copy.'))).toEqual([]);
    return result;
  }

  it('copies a file into a directory when the destination ends with / (creating it), else to the named path', async () => {
    const root = join(dir, 'root');
    await copy('app.sh', `${root}/srv/`);
    expect(await readFile(join(root, 'srv', 'app.sh'), 'utf8')).toContain('echo app');
    expect((await stat(join(root, 'srv', 'app.sh'))).mode & 0o777).toBe(0o755);

    await copy('notes.txt', `${root}/etc/renamed.txt`, {}, true);
    expect(await readFile(join(root, 'etc', 'renamed.txt'), 'utf8')).toBe('notes');

    // An existing directory named without the slash still receives the file.
    await copy('notes.txt', `${root}/srv`);
    expect(await readFile(join(root, 'srv', 'notes.txt'), 'utf8')).toBe('notes');
  });

  it("copies a directory's contents (dotfiles included), not the directory itself", async () => {
    const target = join(dir, 'root', 'opt', 'app');
    await copy('app', target);
    expect((await readdir(target)).sort()).toEqual(['.hidden', 'lib', 'main.py']);
    expect(await readFile(join(target, 'lib', 'util.py'), 'utf8')).toBe('x = 1');
  });

  it('copies every match of a glob into the destination directory, and a relative destination lands in the workdir', async () => {
    const workdir = join(dir, 'root', 'work');
    // Two matches (a directory, whose contents go in, and a file): the destination is a directory.
    await copy('app*', 'docs', { KILN_WORKDIR: workdir });
    expect((await readdir(join(workdir, 'docs'))).sort()).toEqual(['.hidden', 'app.sh', 'lib', 'main.py']);
    // One file matched and no trailing slash: the destination names the file.
    await copy('*.txt', 'notes.copy', { KILN_WORKDIR: workdir });
    expect(await readFile(join(workdir, 'notes.copy'), 'utf8')).toBe('notes');
    await copy('*.sh', 'bin/', { KILN_WORKDIR: workdir });
    expect(await readdir(join(workdir, 'bin'))).toEqual(['app.sh']);
  });

  it('applies the owner and mode to what it copied and to the directories it created', async () => {
    const owner = (await run('id', ['-u', 'nobody']).catch(() => undefined)) ? 'nobody' : 'root';
    const uid = Number((await run('id', ['-u', owner])).stdout.trim());
    const root = join(dir, 'root');
    await mkdir(root);
    await copy('app', `${root}/new/deep/`, { KILN_OWNER: owner, KILN_MODE: '0750' });
    for (const path of [join(root, 'new'), join(root, 'new', 'deep'), join(root, 'new', 'deep', 'main.py'), join(root, 'new', 'deep', 'lib', 'util.py')]) {
      expect((await lstat(path)).uid).toBe(uid);
    }
    expect((await stat(join(root, 'new', 'deep', 'main.py'))).mode & 0o777).toBe(0o750);
    // The directory that already existed keeps its owner.
    expect((await stat(root)).uid).toBe(process.getuid!());
  });

  it('fails with a message naming the source when nothing matches', async () => {
    await expect(copy('missing/*.py', join(dir, 'out'))).rejects.toMatchObject({ stderr: expect.stringContaining("matches 'missing/*.py'") });
  });

  it('keeps symlinks as symlinks', async () => {
    await symlink('notes.txt', join(context, 'link.txt'));
    const out = join(dir, 'root', 'links');
    await copy('link.txt', `${out}/`);
    expect((await lstat(join(out, 'link.txt'))).isSymbolicLink()).toBe(true);
  });
});

describe('WORKDIR creation in the build VM', () => {
  let dir: string;
  beforeEach(async () => (dir = await mkdtemp(join(tmpdir(), 'kiln-workdir-spec-'))));
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('creates the missing directories owned by the user and leaves an existing one alone', async () => {
    const owner = (await run('id', ['-u', 'nobody']).catch(() => undefined)) ? 'nobody' : 'root';
    const uid = Number((await run('id', ['-u', owner])).stdout.trim());
    const workdir = join(dir, 'srv', 'app');
    const env = { PATH: process.env.PATH, KILN_WORKDIR: workdir, KILN_USER: owner };
    await run('bash', ['-c', ENSURE_WORKDIR_SCRIPT], { env });
    expect((await stat(workdir)).isDirectory()).toBe(true);
    expect((await stat(join(dir, 'srv'))).uid).toBe(uid);
    expect((await stat(dir)).uid).toBe(process.getuid!());
    await run('bash', ['-c', ENSURE_WORKDIR_SCRIPT], { env });
  });
});
