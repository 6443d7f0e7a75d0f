import { createHash, randomBytes } from 'node:crypto';
import { access, chmod, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Inject, Injectable } from '@nestjs/common';
import { BaseLayersConfig } from './base-layers.config';
import { BaseLayerCancelledError, BaseLayerError, BaseLayerToolError, UnsupportedBaseImageError } from './base-layers.errors';
import type { BaseLayerImageConfig, PreparedBaseLayer, RegistryCredentials } from './base-layers.types';
import { buildDebianRootfs, DEBIAN_BASE_PACKAGES, DEBIAN_IMAGE_CONFIG } from './debian-suite';
import { makeExt4Image } from './ext4-image';
import { resolveBaseSource, type BaseSource } from './image-reference';
import { KilnRuntimeSource, type KilnRuntime } from './kiln-runtime';
import { OciPuller, readOciLayout, unpackOciLayout } from './oci-image';
import { prepareRootfs } from './rootfs-setup';
import { runTool } from './tool-runner';

/** Bumped when what a base layer holds changes for the same image (so old cache entries are not reused). */
const BASE_LAYER_FORMAT = 1;
/** Work dirs older than this are leftovers of a killed agent (no prepare takes that long). */
const STALE_WORK_MS = 6 * 3600_000;

interface SharedJob {
  promise: Promise<PreparedBaseLayer>;
  controller: AbortController;
  waiters: number;
  logs: Set<(line: string) => void>;
}

/**
 * Base layers of template builds (step "0"), cached by content under <data>/build-cache/bases/<key>/:
 * `rootfs.ext4` (read-only), `config.json` (the image's Env/WorkingDir/User/Cmd/Entrypoint) and `complete`, written
 * last. Same key, one job: concurrent prepares share it, and it is cancelled only when every caller has cancelled.
 */
@Injectable()
export class BaseLayers {
  private readonly jobs = new Map<string, SharedJob>();
  private staleSweep: Promise<void> | undefined;

  constructor(
    @Inject(BaseLayersConfig) private readonly config: BaseLayersConfig,
    @Inject(KilnRuntimeSource) private readonly runtimes: KilnRuntimeSource,
  ) {}

  async prepare(
    image: string,
    credentials: RegistryCredentials | undefined,
    log: (line: string) => void,
    signal: AbortSignal,
  ): Promise<PreparedBaseLayer> {
    if (signal.aborted) throw new BaseLayerCancelledError();
    const source = resolveBaseSource(image, { registry: this.config.defaultRegistry });
    await mkdir(this.config.basesDir, { recursive: true, mode: 0o755 });
    this.staleSweep ??= this.removeStaleWorkDirs();
    await this.staleSweep;
    let identity: string;
    let pinnedDigest = '';
    if (source.kind === 'oci') {
      pinnedDigest = await this.resolveDigest(source, credentials, signal);
      identity = `oci ${pinnedDigest}`;
    } else {
      identity = `debian ${source.suite} ${DEBIAN_BASE_PACKAGES.join(',')}`;
    }
    // After the registry answered: a user's mistake (unknown image, refused credentials) is reported as such first.
    const runtime = await this.runtimes.get(signal, log);
    const key = createHash('sha256').update(`kiln base layer ${BASE_LAYER_FORMAT}\n${identity}\nruntime ${runtime.id}\n`).digest('hex');
    const cached = await this.cached(key);
    if (cached) {
      log(`base layer ${image}: cached (${key.slice(0, 12)})`);
      return cached;
    }

    let job = this.jobs.get(key);
    if (!job) {
      const controller = new AbortController();
      const logs = new Set<(line: string) => void>();
      const emit = (line: string) => {
        for (const sink of logs) sink(line);
      };
      const created: SharedJob = {
        controller,
        logs,
        waiters: 0,
        promise: this.build(key, source, pinnedDigest, credentials, runtime, controller.signal, emit).finally(() => this.jobs.delete(key)),
      };
      // Nobody may be left waiting when it fails after every caller cancelled: keep the rejection handled.
      created.promise.catch(() => undefined);
      this.jobs.set(key, created);
      job = created;
    } else {
      log(`base layer ${image}: joining the preparation already running (${key.slice(0, 12)})`);
    }
    return this.attach(job, log, signal);
  }

  private attach(job: SharedJob, log: (line: string) => void, signal: AbortSignal): Promise<PreparedBaseLayer> {
    if (signal.aborted) return Promise.reject(new BaseLayerCancelledError());
    job.waiters++;
    job.logs.add(log);
    return new Promise<PreparedBaseLayer>((resolve, reject) => {
      const leave = () => {
        signal.removeEventListener('abort', onAbort);
        job.logs.delete(log);
        job.waiters--;
      };
      const onAbort = () => {
        leave();
        if (job.waiters === 0) job.controller.abort();
        reject(new BaseLayerCancelledError());
      };
      signal.addEventListener('abort', onAbort, { once: true });
      job.promise.then(
        (layer) => {
          if (signal.aborted) return;
          leave();
          resolve(layer);
        },
        (error: unknown) => {
          if (signal.aborted) return;
          leave();
          reject(error);
        },
      );
    });
  }

  /** Digest of the manifest the reference names. Asked of the registry even for digest references, so a cached
   *  private image is only handed to a build whose credentials the registry accepts. */
  private async resolveDigest(source: Extract<BaseSource, { kind: 'oci' }>, credentials: RegistryCredentials | undefined, signal: AbortSignal): Promise<string> {
    const authDir = join(this.config.basesDir, `.auth-${randomBytes(6).toString('hex')}`);
    await mkdir(authDir, { mode: 0o700 });
    try {
      const puller = new OciPuller(this.config, source, credentials, join(authDir, 'auth.json'));
      await puller.writeAuthFile();
      const digest = await puller.manifestDigest(signal);
      return source.digest ?? digest;
    } finally {
      await rm(authDir, { recursive: true, force: true });
    }
  }

  private async cached(key: string): Promise<PreparedBaseLayer | undefined> {
    const dir = join(this.config.basesDir, key);
    try {
      await access(join(dir, 'complete'));
      const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as BaseLayerImageConfig;
      return { key, rootfsPath: join(dir, 'rootfs.ext4'), config };
    } catch {
      return undefined;
    }
  }

  private async build(
    key: string,
    source: BaseSource,
    /** OCI: the manifest digest the key was made from; the pull uses it, so a tag moving meanwhile changes nothing. */
    pinnedDigest: string,
    credentials: RegistryCredentials | undefined,
    runtime: KilnRuntime,
    signal: AbortSignal,
    log: (line: string) => void,
  ): Promise<PreparedBaseLayer> {
    const work = join(this.config.basesDir, `.work-${key}-${randomBytes(4).toString('hex')}`);
    const started = Date.now();
    try {
      await mkdir(work, { mode: 0o700 });
      const rootfs = join(work, 'rootfs');
      let config: BaseLayerImageConfig;
      if (source.kind === 'oci') {
        const puller = new OciPuller(this.config, source, credentials, join(work, 'auth.json'));
        await puller.writeAuthFile();
        log(`pulling ${source.image} from ${puller.pullRegistry}`);
        const layout = join(work, 'oci');
        await puller.copyTo(layout, pinnedDigest, signal, log);
        await rm(join(work, 'auth.json'), { force: true });
        const image = await readOciLayout(layout);
        if (image.layers === 0) throw new UnsupportedBaseImageError(`${source.image}: the image has no layers`);
        log(`unpacking ${image.layers} layer${image.layers === 1 ? '' : 's'} (${image.manifestDigest})`);
        await unpackOciLayout(layout, rootfs, signal);
        await rm(layout, { recursive: true, force: true });
        config = image.config;
      } else {
        await buildDebianRootfs(this.config, source.suite, rootfs, signal, log);
        config = DEBIAN_IMAGE_CONFIG;
      }
      if (signal.aborted) throw new BaseLayerCancelledError();
      await prepareRootfs(rootfs, runtime, signal, log);

      const out = join(work, 'out');
      await mkdir(out, { mode: 0o755 });
      const { bytes } = await makeExt4Image(rootfs, join(out, 'rootfs.ext4'), signal);
      await chmod(join(out, 'rootfs.ext4'), 0o444);
      await writeFile(join(out, 'config.json'), `${JSON.stringify(config, null, 2)}\n`, { mode: 0o444 });
      await writeFile(join(out, 'source.json'), `${JSON.stringify({ image: source.image, kind: source.kind, runtime: runtime.id }, null, 2)}\n`);
      if (signal.aborted) throw new BaseLayerCancelledError();

      const dir = join(this.config.basesDir, key);
      const raced = await this.cached(key);
      if (raced) return raced; // another agent on this data dir finished the same key meanwhile
      await rm(dir, { recursive: true, force: true });
      await rename(out, dir);
      await chmod(dir, 0o755);
      await writeFile(join(dir, 'complete'), '');
      log(`base layer ${source.image} ready in ${Math.round((Date.now() - started) / 1000)} s (${Math.round(bytes / 1024 / 1024)} MiB ext4, ${key.slice(0, 12)})`);
      return { key, rootfsPath: join(dir, 'rootfs.ext4'), config };
    } catch (error) {
      if (signal.aborted) throw new BaseLayerCancelledError();
      if (error instanceof BaseLayerError) throw error;
      throw new BaseLayerToolError(`preparing base layer ${source.image}: ${(error as Error).message}`);
    } finally {
      await removeWorkDir(work).catch((error: Error) => log(`warning: could not remove ${work}: ${error.message}`));
    }
  }

  private async removeStaleWorkDirs(): Promise<void> {
    const entries = await readdir(this.config.basesDir).catch(() => [] as string[]);
    for (const name of entries) {
      if (!name.startsWith('.work-') && !name.startsWith('.auth-')) continue;
      const path = join(this.config.basesDir, name);
      const info = await stat(path).catch(() => undefined);
      if (info && Date.now() - info.mtimeMs > STALE_WORK_MS) await removeWorkDir(path).catch(() => undefined);
    }
  }
}

/**
 * Removes a work dir, first detaching anything still mounted below it (mmdebstrap mounts /proc, /sys and /dev
 * nodes into its chroot; a killed one may leave them), and never crossing into another filesystem.
 */
export async function removeWorkDir(dir: string): Promise<void> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const mounts = mountinfo
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((point): point is string => !!point && (point === dir || point.startsWith(`${dir}/`)))
    .map((point) => point.replace(/\\040/g, ' '))
    .sort((a, b) => b.length - a.length);
  const signal = new AbortController().signal;
  for (const point of mounts) await runTool('umount', ['-l', point], { signal, timeoutMs: 60_000 }).catch(() => undefined);
  await runTool('rm', ['-rf', '--one-file-system', '--', dir], { signal, timeoutMs: 30 * 60_000 });
}
