import { createHash, randomBytes } from 'node:crypto';
import { access, chmod, copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { Inject, Injectable } from '@nestjs/common';
import { TemplateStore, type TemplateBuild } from '../../template';
import { BaseLayersConfig } from './base-layers.config';
import { BaseLayerCancelledError, BaseLayerError, RuntimeSourceError } from './base-layers.errors';
import { Ext4Reader } from './ext4-tools';
import { runTool } from './tool-runner';

/**
 * What every base layer gets so the Kiln runtime boots it with `base`'s kernel and initramfs, whatever the image
 * holds (another libc, no bash, no iproute2). Everything lives under /opt/kiln, so the image's own files (its node,
 * its /usr/bin/tini) stay as they are:
 * - /opt/kiln/guest-agent/       the guest agent, copied out of `base`'s rootfs;
 * - /opt/kiln/runtime/bin/node   `base`'s node, its interpreter and rpath pointed at /opt/kiln/runtime/lib (patchelf),
 *   which holds the glibc, libstdc++ and loader it was built against (copied out of `base` too): it runs the same on
 *   a musl or an older-glibc image, and keeps a normal process.execPath (a loader invocation would not);
 * - /opt/kiln/bin/busybox        `base`'s initramfs busybox (static): the init's mount, ip and hostname;
 * - /opt/kiln/bin/tini           tini-static (Debian's tini package, on the host): the initramfs execs it when present
 *   (tools/guest-image/initramfs-init.sh) instead of the image's /usr/bin/tini;
 * - /opt/kiln/init               guest-init.sh's steps with busybox's tools, then the agent on the runtime's node.
 */
export interface KilnRuntime {
  /** Identifies the runtime's content: the `base` build it came from and this file's format. Part of base layer keys. */
  id: string;
  /** A tree holding opt/kiln/..., copied into each base rootfs. */
  treeDir: string;
}

const RUNTIME_LIB_DIR = '/opt/kiln/runtime/lib';
const LOADER = 'ld-linux-x86-64.so.2';
const LIBRARY_DIRS = ['/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu', '/lib64', '/usr/lib64', '/lib', '/usr/lib', '/usr/local/lib'];
const TINI_STATIC = '/usr/bin/tini-static';

/**
 * tools/guest-image/guest-init.sh for a rootfs that may lack bash and every tool it calls: the same mounts, network
 * and hostname from the kernel command line, each through Kiln's static busybox. Keep the two in step.
 */
export function imageInitScript(agentPort: number): string {
  return `#!/opt/kiln/bin/busybox sh
# Kiln init for templates built from images (see apps/host-agent/src/template-build/base-layers/kiln-runtime.ts):
# tools/guest-image/guest-init.sh's steps through /opt/kiln/bin/busybox, then the guest agent on /opt/kiln/runtime.
set -u
bb=/opt/kiln/bin/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

cmdline_value() {
  for word in $($bb cat /proc/cmdline); do
    case $word in "$1="*) echo "\${word#*=}"; return ;; esac
  done
  echo "$2"
}

# Debian's static busybox has no mountpoint applet: /proc/mounts says what is mounted (nothing before /proc is).
mount_once() {
  $bb mkdir -p "$2"
  $bb grep -q "^[^ ]* $2 " /proc/mounts 2>/dev/null || $bb mount -t "$1" -o "$3" "$1" "$2"
}

mount_once proc /proc nosuid,nodev,noexec
mount_once sysfs /sys nosuid,nodev,noexec
mount_once devtmpfs /dev mode=0755,nosuid
$bb mkdir -p /dev/pts /dev/shm
mount_once devpts /dev/pts gid=5,mode=620,ptmxmode=666,nosuid,noexec
mount_once tmpfs /dev/shm mode=1777,nosuid,nodev
mount_once tmpfs /tmp mode=1777,nosuid,nodev
mount_once tmpfs /run mode=0755,nosuid,nodev
$bb ln -sfn /proc/self/fd /dev/fd

guest_ip=$(cmdline_value kiln.ip 169.254.0.21/30)
gateway=$(cmdline_value kiln.gw 169.254.0.22)
hostname_value=$(cmdline_value kiln.hostname kiln)

$bb hostname "$hostname_value"
$bb ip link set lo up
$bb ip addr add "$guest_ip" dev eth0
$bb ip link set eth0 up
$bb ip route add default via "$gateway" dev eth0

echo "kiln-init: kernel $($bb uname -r) ip \${guest_ip} gw \${gateway} (image runtime)" >/dev/console
# --jitless: see guest-init.sh (under TCG, translated JIT output is most of what a restored clone re-translates).
exec /opt/kiln/runtime/bin/node --jitless /opt/kiln/guest-agent/guest-agent.js --port ${agentPort}
`;
}

/** Bumped when what this file puts into the tree changes, so cached runtimes and the bases built on them are redone. */
const RUNTIME_FORMAT = 2;

/**
 * Extracts the Kiln runtime from the current build of the runtime template (`base`) once per build, into
 * <data>/build-cache/runtime/<id>/ (with a `complete` marker), without mounting anything.
 */
@Injectable()
export class KilnRuntimeSource {
  private readonly inFlight = new Map<string, Promise<KilnRuntime>>();

  constructor(
    @Inject(BaseLayersConfig) private readonly config: BaseLayersConfig,
    @Inject(TemplateStore) private readonly templates: TemplateStore,
  ) {}

  async get(signal: AbortSignal, log: (line: string) => void): Promise<KilnRuntime> {
    let build: TemplateBuild;
    try {
      build = await this.templates.resolve(this.config.runtimeTemplateId);
    } catch (error) {
      throw new RuntimeSourceError(
        `the ${this.config.runtimeTemplateId} template (whose guest agent and node every image base gets) is not usable on this host: ${(error as Error).message}`,
      );
    }
    if (build.rootfs.format !== 'raw') throw new RuntimeSourceError(`${build.templateId}/${build.buildId}: rootfs is ${build.rootfs.format}, not raw ext4`);
    const scriptDigest = createHash('sha256').update(`${RUNTIME_FORMAT}\n${imageInitScript(build.agentPort)}`).digest('hex').slice(0, 12);
    const id = `${build.templateId}-${build.buildId}-${scriptDigest}`;
    const dir = join(this.config.runtimesDir, id);
    const runtime: KilnRuntime = { id, treeDir: join(dir, 'tree') };
    if (await exists(join(dir, 'complete'))) return runtime;
    let job = this.inFlight.get(id);
    if (!job) {
      // Not tied to one caller's signal: other prepares may wait for it; it is short and its result is kept.
      job = this.extract(build, dir, runtime, log).finally(() => this.inFlight.delete(id));
      this.inFlight.set(id, job);
    }
    return abortable(job, signal);
  }

  private async extract(build: TemplateBuild, dir: string, runtime: KilnRuntime, log: (line: string) => void): Promise<KilnRuntime> {
    const signal = new AbortController().signal;
    const work = join(this.config.runtimesDir, `.work-${runtime.id}-${randomBytes(4).toString('hex')}`);
    const tree = join(work, 'tree');
    log(`extracting the Kiln runtime from template ${build.templateId} build ${build.buildId}`);
    try {
      await mkdir(work, { recursive: true, mode: 0o755 });
      const rootfs = new Ext4Reader(build.rootfs.path, signal);

      if (!(await rootfs.stat('/opt/kiln/guest-agent/guest-agent.js'))) {
        throw new RuntimeSourceError(`${build.rootfs.path} has no /opt/kiln/guest-agent/guest-agent.js`);
      }
      await rootfs.dumpTree('/opt/kiln/guest-agent', join(tree, 'opt/kiln'));

      const node = join(tree, 'opt/kiln/runtime/bin/node');
      await rootfs.dumpFile('/usr/local/bin/node', node);
      await chmod(node, 0o755);

      // The libraries node and the agent's native addons load, taken from `base` (the libc they were built against).
      const libDir = join(tree, RUNTIME_LIB_DIR);
      const addons = await findFiles(join(tree, 'opt/kiln/guest-agent'), (name) => name.endsWith('.node'));
      const sonames = new Set<string>();
      for (const binary of [node, ...addons]) for (const soname of await neededLibraries(binary, signal)) sonames.add(soname);
      sonames.add(LOADER);
      for (const soname of sonames) {
        const source = await findLibrary(rootfs, soname);
        if (!source) throw new RuntimeSourceError(`${build.rootfs.path}: no ${soname} (needed by node or the guest agent)`);
        await rootfs.dumpFile(source, join(libDir, soname));
      }
      await runTool('patchelf', ['--set-interpreter', `${RUNTIME_LIB_DIR}/${LOADER}`, '--force-rpath', '--set-rpath', RUNTIME_LIB_DIR, node], { signal });
      // Run it the way the guest will (its own loader and libraries only), from here.
      const { stdout } = await runTool(join(libDir, LOADER), ['--library-path', libDir, node, '-e', 'process.stdout.write(process.version)'], {
        signal,
        timeoutMs: 60_000,
        env: { PATH: '/usr/bin:/bin' },
      });
      log(`runtime node ${stdout.trim()} with ${[...sonames].sort().join(', ')}`);

      const busybox = join(tree, 'opt/kiln/bin/busybox');
      await mkdir(join(tree, 'opt/kiln/bin'), { recursive: true, mode: 0o755 });
      await writeFile(busybox, extractFromCpio(gunzipSync(await readFile(build.initrdPath)), 'bin/busybox', build.initrdPath), { mode: 0o755 });
      await runTool(busybox, ['true'], { signal, timeoutMs: 10_000 });

      await access(TINI_STATIC).catch(() => {
        throw new RuntimeSourceError(`${TINI_STATIC} is missing on this host (Debian package tini)`);
      });
      await copyFile(TINI_STATIC, join(tree, 'opt/kiln/bin/tini'));
      await chmod(join(tree, 'opt/kiln/bin/tini'), 0o755);

      await writeFile(join(tree, 'opt/kiln/init'), imageInitScript(build.agentPort), { mode: 0o755 });
      await runTool('chown', ['-R', '0:0', join(tree, 'opt')], { signal });
      await runTool('chmod', ['-R', 'u=rwX,go=rX', join(tree, 'opt')], { signal });
      await writeFile(join(work, 'runtime.json'), `${JSON.stringify({ id: runtime.id, templateId: build.templateId, buildId: build.buildId, sonames: [...sonames] }, null, 2)}\n`);

      await rm(dir, { recursive: true, force: true });
      await rename(work, dir);
      await writeFile(join(dir, 'complete'), '');
      return runtime;
    } catch (error) {
      if (error instanceof BaseLayerError) throw error;
      throw new RuntimeSourceError(`extracting the Kiln runtime from ${build.templateId}/${build.buildId}: ${(error as Error).message}`);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }
}

/** Every shared library `binary` loads, by soname (ldd: transitive, as the loader resolves them). */
async function neededLibraries(binary: string, signal: AbortSignal): Promise<string[]> {
  const { stdout } = await runTool('ldd', [binary], { signal, timeoutMs: 30_000 });
  const sonames: string[] = [];
  for (const line of stdout.split('\n')) {
    const match = /^\s*(\S+)\s+=>/.exec(line);
    if (match && !match[1].startsWith('linux-vdso')) sonames.push(match[1]);
  }
  return sonames;
}

async function findLibrary(rootfs: Ext4Reader, soname: string): Promise<string | undefined> {
  for (const dir of LIBRARY_DIRS) {
    const path = `${dir}/${soname}`;
    if (await rootfs.stat(path)) return path;
  }
  return undefined;
}

async function findFiles(dir: string, accept: (name: string) => boolean): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...(await findFiles(path, accept)));
    else if (entry.isFile() && accept(entry.name)) found.push(path);
  }
  return found;
}

/** One regular file out of a newc cpio archive (the initramfs format of tools/guest-image/build.sh). */
export function extractFromCpio(archive: Buffer, wanted: string, label: string): Buffer {
  let offset = 0;
  const field = (at: number, index: number) => parseInt(archive.toString('ascii', at + 6 + index * 8, at + 14 + index * 8), 16);
  while (offset + 110 <= archive.length) {
    const magic = archive.toString('ascii', offset, offset + 6);
    if (magic !== '070701' && magic !== '070702') break;
    const mode = field(offset, 1);
    const fileSize = field(offset, 6);
    const nameSize = field(offset, 11);
    const name = archive.toString('utf8', offset + 110, offset + 110 + nameSize - 1);
    const dataStart = align4(offset + 110 + nameSize);
    if (name === 'TRAILER!!!') break;
    if (name.replace(/^\.\//, '') === wanted && (mode & 0o170000) === 0o100000) {
      return archive.subarray(dataStart, dataStart + fileSize);
    }
    offset = align4(dataStart + fileSize);
  }
  throw new RuntimeSourceError(`${label} has no ${wanted}`);
}

function align4(value: number): number {
  return (value + 3) & ~3;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** `job`'s result, or BaseLayerCancelledError as soon as `signal` aborts (the job itself goes on for others). */
export function abortable<T>(job: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new BaseLayerCancelledError());
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new BaseLayerCancelledError());
    signal.addEventListener('abort', onAbort, { once: true });
    job.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
