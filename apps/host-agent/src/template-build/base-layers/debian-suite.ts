import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { BaseLayersConfig } from './base-layers.config';
import { UnsupportedBaseImageError, BaseLayerToolError, RegistryUnreachableError } from './base-layers.errors';
import type { BaseLayerImageConfig } from './base-layers.types';
import { runTool } from './tool-runner';

/**
 * Packages on top of mmdebstrap's minbase: what E2B's SDK and Kiln's steps use in every template (RUN is
 * `bash -l -c`, `user` gets sudo, the runtime's network setup and `ps`). Everything else (node, busybox, tini) is the
 * Kiln runtime under /opt/kiln.
 */
export const DEBIAN_BASE_PACKAGES = ['bash', 'ca-certificates', 'sudo', 'iproute2', 'procps', 'tar', 'mount', 'util-linux'];

/** The image config of Docker Hub's debian images, which `debian:<suite>` stands for. */
export const DEBIAN_IMAGE_CONFIG: BaseLayerImageConfig = {
  env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' },
  cmd: ['bash'],
};

export async function debianMirror(config: BaseLayersConfig): Promise<string> {
  if (config.debianMirror) return config.debianMirror.replace(/\/+$/, '');
  const sources = await readFile('/etc/apt/sources.list.d/debian.sources', 'utf8').catch(() => '');
  const uri = /^URIs:\s*(\S+)/m.exec(sources)?.[1];
  return (uri ?? 'http://deb.debian.org/debian').replace(/\/+$/, '');
}

/** Refuses a suite the mirror does not carry before mmdebstrap starts (a user error, not a failed tool). */
export async function checkSuiteOnMirror(mirror: string, suite: string, signal: AbortSignal): Promise<void> {
  let status: number;
  try {
    const response = await fetch(`${mirror}/dists/${suite}/Release`, { method: 'HEAD', signal: AbortSignal.any([signal, AbortSignal.timeout(30_000)]) });
    status = response.status;
  } catch (error) {
    if (signal.aborted) throw error;
    throw new RegistryUnreachableError(`debian:${suite}: the Debian mirror ${mirror} is unreachable (${(error as Error).message})`);
  }
  if (status === 404) throw new UnsupportedBaseImageError(`debian:${suite}: the Debian mirror ${mirror} has no suite ${suite}`);
  if (status >= 400) throw new BaseLayerToolError(`debian:${suite}: the Debian mirror ${mirror} answered ${status}`);
}

/**
 * mmdebstrap --variant=minbase into `rootfsDir`, the way tools/guest-image/build.sh builds `base`: the .deb files of
 * earlier runs (base's `rootfs` set and this suite's own set in the shared cache) are handed to apt first (apt
 * checks each against the mirror's index and downloads only what is missing), then this run's set replaces the
 * suite's set in the cache.
 */
export async function buildDebianRootfs(
  config: BaseLayersConfig,
  suite: string,
  rootfsDir: string,
  signal: AbortSignal,
  log: (line: string) => void,
): Promise<void> {
  const mirror = await debianMirror(config);
  await checkSuiteOnMirror(mirror, suite, signal);
  const cacheRoot = config.debCacheDir;
  const own = join(cacheRoot, `base-layer-${suite}`);
  const staging = join(cacheRoot, `.base-layer-${suite}-${process.pid}-${Date.now()}`);
  await mkdir(own, { recursive: true });
  await mkdir(staging, { recursive: true });
  const seeds = [join(cacheRoot, 'rootfs'), own];
  const q = (path: string) => `'${path.replace(/'/g, `'\\''`)}'`;
  const seedLoop = seeds.map((dir) => `for f in ${q(dir)}/*.deb; do [ -e "$f" ] || continue; ln -f "$f" "$1/var/cache/apt/archives/" 2>/dev/null || cp "$f" "$1/var/cache/apt/archives/"; done`).join('; ');
  log(`mmdebstrap ${suite} (minbase + ${DEBIAN_BASE_PACKAGES.join(', ')}) from ${mirror}`);
  try {
    await runTool(
      'mmdebstrap',
      [
        '--variant=minbase', '--mode=root', `--include=${DEBIAN_BASE_PACKAGES.join(',')}`, '--skip=essential/unlink',
        `--setup-hook=mkdir -p "$1/var/cache/apt/archives" && ${seedLoop}`,
        `--customize-hook=for f in "$1"/var/cache/apt/archives/*.deb; do [ -e "$f" ] || continue; ln "$f" ${q(staging)}/ 2>/dev/null || cp "$f" ${q(staging)}/; done; rm -f "$1"/var/cache/apt/archives/*.deb`,
        '--aptopt=Acquire::Languages "none"',
        '--dpkgopt=path-exclude=/usr/share/man/*',
        '--dpkgopt=path-exclude=/usr/share/locale/*',
        '--dpkgopt=path-exclude=/usr/share/doc/*',
        '--dpkgopt=path-include=/usr/share/doc/*/copyright',
        suite, rootfsDir, mirror,
      ],
      { signal, onLine: log, timeoutMs: 30 * 60_000, termGraceMs: 15_000, env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root', LC_ALL: 'C.UTF-8' } },
    );
    await replaceDir(staging, own);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

async function replaceDir(from: string, to: string): Promise<void> {
  const old = `${to}.old-${process.pid}-${Date.now()}`;
  await rename(to, old).catch(() => undefined);
  await rename(from, to);
  await rm(old, { recursive: true, force: true });
}
