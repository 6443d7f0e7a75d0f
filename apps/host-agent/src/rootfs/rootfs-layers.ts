import { randomBytes } from 'node:crypto';
import { chmod, link, open, rm, stat } from 'node:fs/promises';
import { basename, isAbsolute, join, resolve } from 'node:path';
import { Inject, Injectable } from '@nestjs/common';
import { runHostCommand } from '../host-command/host-command';
import { FlattenedImages } from './flattened-images';
import { ReflinkSupport } from './reflink-support';
import {
  InvalidLayerRequestError,
  LayerExistsError,
  RootfsDriverUnavailableError,
  SourceFormatMismatchError,
  SourceImageNotFoundError,
} from './rootfs.errors';
import { ROOTFS_OPTIONS, type ImageFormat, type RootfsDriverName, type RootfsOptions } from './rootfs.options';

export interface SourceImage {
  path: string;
  format: ImageFormat;
}

/** A sandbox's writable disk: what the VMM opens, and how it was made. */
export interface RootfsLayer {
  sandboxId: string;
  path: string;
  /** Format the VMM must open `path` with. */
  format: ImageFormat;
  driver: RootfsDriverName;
  /** The read-only image the layer was made from (for qcow2, its backing file). */
  source: SourceImage;
}

export interface LayerUsage {
  /** Bytes of storage this layer holds on its own: its writes (plus format metadata), not the shared template. */
  allocatedBytes: number;
  /** Size of the disk as the guest sees it (raw), or of the layer file (qcow2). */
  apparentBytes: number;
}

const SANDBOX_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;
const LAYER_FILE = /^([A-Za-z0-9][A-Za-z0-9_-]{0,127})-rootfs\.(qcow2|raw)$/;
const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

/**
 * Copy-on-write root disks for sandboxes. The source image is only ever read (qcow2 backing file, reflink source,
 * copy source), so every sandbox started from one template sees the same bytes and pays only for its own writes.
 */
@Injectable()
export class RootfsLayers {
  constructor(
    @Inject(ROOTFS_OPTIONS) private readonly options: RootfsOptions,
    private readonly reflink: ReflinkSupport,
    private readonly flattened: FlattenedImages,
  ) {}

  async createLayer(sandboxId: string, source: SourceImage, dir: string): Promise<RootfsLayer> {
    if (!SANDBOX_ID.test(sandboxId)) throw new InvalidLayerRequestError(`invalid sandbox id ${JSON.stringify(sandboxId)}`);
    if (!isAbsolute(dir) || !isAbsolute(source.path)) {
      throw new InvalidLayerRequestError('layer directory and source image paths must be absolute');
    }
    await this.checkSource(source);
    const dirStat = await stat(dir).catch(() => undefined);
    if (!dirStat?.isDirectory()) throw new InvalidLayerRequestError(`layer directory ${dir} does not exist`);

    const driver = await this.pickDriver(source, dir, dirStat.dev);
    const format: ImageFormat = driver === 'qcow2' ? 'qcow2' : 'raw';
    const path = join(dir, `${sandboxId}-rootfs.${format}`);
    if (await exists(path)) throw new LayerExistsError(path);

    // Build under a temporary name, then link into place: link fails if the name was taken meanwhile, so an existing
    // layer (a sandbox's data) is never overwritten and a half-written one is never visible under the final name.
    const partial = `${path}.partial-${randomBytes(6).toString('hex')}`;
    try {
      await this.build(driver, source, partial);
      // A sandbox's disk is its data: only root opens it (the agent hands it to the VMM as fds), never the uid of any
      // VMM, whatever the agent's umask.
      await chmod(partial, 0o600);
      await link(partial, path).catch((err: NodeJS.ErrnoException) => {
        throw err.code === 'EEXIST' ? new LayerExistsError(path) : err;
      });
    } finally {
      await rm(partial, { force: true });
    }
    return { sandboxId, path, format, driver, source: { ...source } };
  }

  /** Deletes the layer file; a layer already gone is not an error. */
  async removeLayer(layer: Pick<RootfsLayer, 'path' | 'sandboxId'>): Promise<void> {
    await rm(this.checkedLayerPath(layer), { force: true });
  }

  async usage(layer: Pick<RootfsLayer, 'path' | 'sandboxId' | 'driver'>): Promise<LayerUsage> {
    const path = this.checkedLayerPath(layer);
    const st = await stat(path);
    const allocatedBytes = layer.driver === 'reflink' ? await unsharedBytes(path, st.blocks * 512) : st.blocks * 512;
    return { allocatedBytes, apparentBytes: st.size };
  }

  private async pickDriver(source: SourceImage, dir: string, dirDev: number): Promise<RootfsDriverName> {
    const requested = this.options.driver;
    if (requested === 'qcow2' || requested === 'copy') return requested;
    if (requested === 'auto' && this.options.vmm === 'qemu') return 'qcow2';
    const sameFilesystem = (await stat(source.path)).dev === dirDev;
    const canReflink = sameFilesystem && (await this.reflink.supported(dir));
    if (canReflink) return 'reflink';
    if (requested === 'reflink') {
      throw new RootfsDriverUnavailableError(
        sameFilesystem
          ? `the filesystem of ${dir} does not support reflinks`
          : `reflink needs ${source.path} and ${dir} on one filesystem`,
      );
    }
    return 'copy';
  }

  private async build(driver: RootfsDriverName, source: SourceImage, target: string): Promise<void> {
    const timeoutMs = this.options.commandTimeoutMs;
    if (driver === 'qcow2') {
      // The backing file is recorded by absolute path and opened read-only by QEMU; the overlay takes all writes.
      await runHostCommand(
        'qemu-img',
        ['create', '-q', '-f', 'qcow2', '-F', source.format, '-b', resolve(source.path), target],
        { timeoutMs },
      );
      return;
    }
    const raw = source.format === 'qcow2' ? await this.flattened.rawOf(source.path) : source.path;
    const mode = driver === 'reflink' ? ['--reflink=always'] : ['--reflink=never', '--sparse=always'];
    await runHostCommand('cp', [...mode, raw, target], { timeoutMs });
  }

  private async checkSource(source: SourceImage): Promise<void> {
    if (source.format !== 'raw' && source.format !== 'qcow2') {
      throw new InvalidLayerRequestError(`source format must be raw or qcow2, got ${JSON.stringify(source.format)}`);
    }
    let handle;
    try {
      handle = await open(source.path, 'r');
    } catch {
      throw new SourceImageNotFoundError(source.path);
    }
    try {
      if (!(await handle.stat()).isFile()) throw new SourceImageNotFoundError(source.path);
      const head = Buffer.alloc(4);
      const { bytesRead } = await handle.read(head, 0, 4, 0);
      const actual: ImageFormat = bytesRead === 4 && head.equals(QCOW2_MAGIC) ? 'qcow2' : 'raw';
      if (actual !== source.format) throw new SourceFormatMismatchError(source.path, source.format, actual);
    } finally {
      await handle.close();
    }
  }

  /** Only files this service named may be read or deleted through a layer object. */
  private checkedLayerPath(layer: Pick<RootfsLayer, 'path' | 'sandboxId'>): string {
    const match = LAYER_FILE.exec(basename(layer.path));
    if (!isAbsolute(layer.path) || !match || match[1] !== layer.sandboxId) {
      throw new InvalidLayerRequestError(`${layer.path} is not the rootfs layer of sandbox ${layer.sandboxId}`);
    }
    return layer.path;
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/**
 * Bytes in extents not shared with another file, from FIEMAP (`filefrag`). A fresh reflink copy shares every extent
 * with its source; each write moves a range into an extent of its own. Falls back to the allocated size when the
 * filesystem cannot report extents.
 */
async function unsharedBytes(path: string, fallback: number): Promise<number> {
  const res = await runHostCommand('filefrag', ['-v', '-b1', path], { acceptExitCodes: [1], timeoutMs: 60_000 });
  if (res.exitCode !== 0) return fallback;
  let total = 0;
  // Rows look like: "   1:   655360..  917503:    8486912..   8749055: 262144:     753664: last,shared,eof"
  for (const line of res.stdout.split('\n')) {
    const row = /^\s*\d+:\s*\d+\.\.\s*\d+:\s*(?:\d+\.\.\s*\d+:)?\s*(\d+):(.*)$/.exec(line);
    if (!row) continue;
    if (!/\bshared\b/.test(row[2])) total += Number(row[1]);
  }
  return total;
}
