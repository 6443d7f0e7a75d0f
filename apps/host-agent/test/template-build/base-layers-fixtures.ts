import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, readFileSync, symlinkSync, writeFileSync, existsSync, copyFileSync, chmodSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from '@kiln/testing';

export { freePort };
import { BaseLayers, BaseLayersConfig, KilnRuntimeSource } from '../../src/template-build/base-layers';
import { TemplateStore } from '../../src/template';

const REPO = join(__dirname, '..', '..', '..', '..');
const AGENT_BUNDLE = join(REPO, 'apps/guest-agent/dist/bundle');

export function run(file: string, args: string[], input?: string): string {
  return execFileSync(file, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'], maxBuffer: 256 * 1024 * 1024 });
}

/** A file's content inside a raw ext4 image (debugfs: nothing is mounted), or undefined when it is absent. */
export function ext4Cat(image: string, path: string): string | undefined {
  if (!ext4Exists(image, path)) return undefined;
  return run('debugfs', ['-R', `cat "${path}"`, image]);
}

export function ext4Exists(image: string, path: string): boolean {
  return /Type: /.test(run('debugfs', ['-R', `stat "${path}"`, image]));
}

/**
 * A `base` template as tools/guest-image/build.sh lays it out, reduced to what base layers copy from it: the guest
 * agent bundle under /opt/kiln, the host's node at /usr/local/bin/node with the glibc libraries it loads (merged-usr
 * paths, as in Debian), and an initramfs whose bin/busybox is the host's static busybox.
 */
export function makeRuntimeTemplate(dataDir: string): void {
  const buildDir = join(dataDir, 'templates/base/fixture1');
  const tree = join(buildDir, '.tree');
  mkdirSync(join(tree, 'opt/kiln/guest-agent'), { recursive: true });
  if (existsSync(join(AGENT_BUNDLE, 'guest-agent.js'))) {
    cpSync(AGENT_BUNDLE, join(tree, 'opt/kiln/guest-agent'), { recursive: true });
  } else {
    writeFileSync(join(tree, 'opt/kiln/guest-agent/guest-agent.js'), 'console.log("guest agent stand-in")\n');
  }
  copyFileSync(join(REPO, 'tools/guest-image/guest-init.sh'), join(tree, 'opt/kiln/init'));
  mkdirSync(join(tree, 'usr/local/bin'), { recursive: true });
  const node = realpathSync(process.execPath);
  copyFileSync(node, join(tree, 'usr/local/bin/node'));
  chmodSync(join(tree, 'usr/local/bin/node'), 0o755);
  const libDir = join(tree, 'usr/lib/x86_64-linux-gnu');
  mkdirSync(libDir, { recursive: true });
  for (const line of run('ldd', [node]).split('\n')) {
    const match = /^\s*(\S+) => (\S+)/.exec(line);
    if (match) copyFileSync(realpathSync(match[2]), join(libDir, match[1]));
  }
  copyFileSync(realpathSync('/lib64/ld-linux-x86-64.so.2'), join(libDir, 'ld-linux-x86-64.so.2'));
  symlinkSync('usr/lib', join(tree, 'lib'));
  mkdirSync(join(tree, 'lib64'));
  symlinkSync('/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', join(tree, 'lib64/ld-linux-x86-64.so.2'));
  run('truncate', ['-s', '1G', join(buildDir, 'rootfs.ext4')]);
  run('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, join(buildDir, 'rootfs.ext4')]);
  run('rm', ['-rf', tree]);

  const initramfs = join(buildDir, '.initramfs');
  mkdirSync(join(initramfs, 'bin'), { recursive: true });
  copyFileSync('/bin/busybox', join(initramfs, 'bin/busybox'));
  run('sh', ['-c', 'cd "$1" && find . | cpio -o -H newc --quiet --owner=0:0 | gzip -1 >"$2"', 'sh', initramfs, join(buildDir, 'initramfs.cpio.gz')]);
  run('rm', ['-rf', initramfs]);
  writeFileSync(join(buildDir, 'vmlinuz'), 'not a kernel');
  writeFileSync(
    join(buildDir, 'template.json'),
    JSON.stringify({
      templateId: 'base', buildId: 'fixture1', vcpus: 1, memoryMib: 512, kernel: 'vmlinuz', initrd: 'initramfs.cpio.gz',
      rootfs: 'rootfs.ext4', rootfsFormat: 'raw', kernelArgs: 'console=ttyS0', kernelRelease: 'fixture', agentPort: 49983,
    }),
  );
  symlinkSync('fixture1', join(dataDir, 'templates/base/current'));
}

export function baseLayersFor(config: BaseLayersConfig): BaseLayers {
  const templates = new TemplateStore({ dataDir: config.dataDir });
  return new BaseLayers(config, new KilnRuntimeSource(config, templates));
}

/** Debian's docker-registry (distribution 2.8) on 127.0.0.1, plain HTTP, htpasswd (bcrypt) auth, temp storage. */
export async function startRegistry(dir: string, user: string, password: string): Promise<{ address: string; stop: () => Promise<void> }> {
  const port = await freePort();
  mkdirSync(join(dir, 'storage'), { recursive: true });
  const hash = run('/usr/bin/python3', ['-W', 'ignore', '-c', 'import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))', password]).trim();
  writeFileSync(join(dir, 'htpasswd'), `${user}:${hash}\n`);
  writeFileSync(
    join(dir, 'config.yml'),
    [
      'version: 0.1',
      'log:', '  level: warn',
      'storage:', '  filesystem:', `    rootdirectory: ${join(dir, 'storage')}`,
      'http:', `  addr: 127.0.0.1:${port}`,
      'auth:', '  htpasswd:', '    realm: kiln-test', `    path: ${join(dir, 'htpasswd')}`,
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn('/usr/bin/docker-registry', ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const address = `127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    const status = await fetch(`http://${address}/v2/`).then((r) => r.status, () => 0);
    if (status === 401) break;
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`docker-registry did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    address,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

/**
 * A two-layer image built with umoci: the lower layer is a busybox-only rootfs with a few files, the upper one deletes
 * /gone.txt (a whiteout) and adds /srv/upper.txt; the config sets Env, WorkingDir, User, Cmd and Entrypoint.
 * Pushed to `target` (docker://...) with skopeo.
 */
export function buildAndPushImage(dir: string, target: string, creds: string, marker: string): void {
  const layout = join(dir, 'layout');
  const bundle = join(dir, 'bundle');
  run('umoci', ['init', '--layout', layout]);
  run('umoci', ['new', '--image', `${layout}:t`]);
  run('umoci', ['unpack', '--image', `${layout}:t`, bundle]);
  const rootfs = join(bundle, 'rootfs');
  mkdirSync(join(rootfs, 'bin'), { recursive: true });
  mkdirSync(join(rootfs, 'etc'), { recursive: true });
  mkdirSync(join(rootfs, 'data'), { recursive: true });
  copyFileSync('/bin/busybox', join(rootfs, 'bin/busybox'));
  chmodSync(join(rootfs, 'bin/busybox'), 0o755);
  symlinkSync('busybox', join(rootfs, 'bin/sh'));
  writeFileSync(join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n');
  writeFileSync(join(rootfs, 'etc/group'), 'root:x:0:\napp:x:1000:\n');
  writeFileSync(join(rootfs, 'gone.txt'), 'deleted by the upper layer\n');
  writeFileSync(join(rootfs, 'data/lower.txt'), `lower ${marker}\n`);
  run('umoci', ['repack', '--refresh-bundle', '--image', `${layout}:t`, bundle]);
  run('rm', ['-f', join(rootfs, 'gone.txt')]);
  mkdirSync(join(rootfs, 'srv'), { recursive: true });
  writeFileSync(join(rootfs, 'srv/upper.txt'), `upper ${marker}\n`);
  run('umoci', ['repack', '--image', `${layout}:t`, bundle]);
  run('umoci', [
    'config', '--image', `${layout}:t`,
    '--config.env', 'GREETING=hello world', '--config.env', 'PATH=/usr/local/bin:/usr/bin:/bin',
    '--config.workingdir', '/srv', '--config.user', 'app',
    '--config.entrypoint', '/bin/sh', '--config.entrypoint', '-c',
    '--config.cmd', 'echo hi',
  ]);
  run('umoci', ['gc', '--layout', layout]);
  run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', '--dest-creds', creds, `oci:${layout}:t`, target]);
  run('rm', ['-rf', layout, bundle]);
}

export function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}
