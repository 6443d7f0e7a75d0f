import 'reflect-metadata';
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Module, type INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { runHostCommand } from '../../src/host-command/host-command';
import {
  InvalidLayerRequestError,
  LayerExistsError,
  RootfsDriverUnavailableError,
  RootfsError,
  RootfsLayers,
  RootfsModule,
  SourceFormatMismatchError,
  SourceImageNotFoundError,
  type RootfsOptions,
} from '../../src/rootfs';
import { LoopXfs, makeRawImage, makeTempDir, MiB, qemuIo, readRaw, sha256, writeRaw } from './image-fixtures';

jest.setTimeout(120_000);

const IMAGE_MIB = 64;
const RANDOM_MIB = 8;
const MARKER_MIB = 16;
/** Each test writes this much into a layer and expects the layer's usage to grow by about as much. */
const WRITE_BYTES = MiB;
/** qcow2 metadata (L2 tables, refcounts) and filesystem block rounding, never anywhere near the image size. */
const OVERHEAD_SLACK = 512 * 1024;

async function layersWith(options: Partial<RootfsOptions>): Promise<{ app: INestApplicationContext; layers: RootfsLayers }> {
  @Module({ imports: [RootfsModule.register(options)] })
  class TestAppModule {}
  const app = await NestFactory.createApplicationContext(TestAppModule, { logger: false, abortOnError: false });
  return { app, layers: app.get(RootfsLayers) };
}

describe('RootfsLayers on real images', () => {
  const apps: INestApplicationContext[] = [];
  let work: string;
  let rawSource: string;
  let rawSourceSha: string;

  const start = async (options: Partial<RootfsOptions>) => {
    const built = await layersWith(options);
    apps.push(built.app);
    return built.layers;
  };

  beforeAll(async () => {
    work = await makeTempDir('kiln-rootfs-');
    rawSource = join(work, 'template.raw');
    await makeRawImage(rawSource, IMAGE_MIB, RANDOM_MIB, MARKER_MIB);
    rawSourceSha = await sha256(rawSource);
  });

  afterAll(async () => {
    await Promise.allSettled(apps.map((a) => a.close()));
    if (work) await rm(work, { recursive: true, force: true });
  });

  describe('qcow2 driver', () => {
    it('gives each sandbox an overlay over a raw template that takes its writes and leaves the template intact', async () => {
      const layers = await start({ driver: 'qcow2' });
      const layer = await layers.createLayer('sbx-q1', { path: rawSource, format: 'raw' }, work);
      expect(layer).toMatchObject({ path: join(work, 'sbx-q1-rootfs.qcow2'), format: 'qcow2', driver: 'qcow2' });
      // Only root opens a sandbox's disk (VMMs get it as fds): no VMM uid can read another sandbox's data.
      expect((await stat(layer.path)).mode & 0o777).toBe(0o600);
      const info = JSON.parse((await runHostCommand('qemu-img', ['info', '--output=json', layer.path])).stdout);
      expect(info).toMatchObject({ format: 'qcow2', 'backing-filename': rawSource, 'backing-filename-format': 'raw' });
      expect(info['virtual-size']).toBe(IMAGE_MIB * MiB);

      const before = await layers.usage(layer);
      await qemuIo(layer.path, 'qcow2', `write -P 0xab 4M ${WRITE_BYTES}`);
      const after = await layers.usage(layer);

      expect(await sha256(rawSource)).toBe(rawSourceSha);
      await qemuIo(layer.path, 'qcow2', `read -P 0xab 4M ${WRITE_BYTES}`);
      await qemuIo(layer.path, 'qcow2', `read -P 0xcd ${MARKER_MIB}M 1M`);
      const grown = after.allocatedBytes - before.allocatedBytes;
      expect(grown).toBeGreaterThanOrEqual(WRITE_BYTES);
      expect(grown).toBeLessThan(WRITE_BYTES + OVERHEAD_SLACK);
      expect(after.allocatedBytes).toBeLessThan(WRITE_BYTES + 2 * OVERHEAD_SLACK);
      await layers.removeLayer(layer);
    });

    it('chains onto a qcow2 template overlay without changing it or its base', async () => {
      const layers = await start({ driver: 'qcow2' });
      const frozen = join(work, 'template-frozen.qcow2');
      await runHostCommand('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', rawSource, frozen]);
      await qemuIo(frozen, 'qcow2', 'write -P 0x11 32M 1M');
      const frozenSha = await sha256(frozen);

      const layer = await layers.createLayer('sbx-q2', { path: frozen, format: 'qcow2' }, work);
      const before = await layers.usage(layer);
      await qemuIo(layer.path, 'qcow2', `write -P 0xab 40M ${WRITE_BYTES}`);
      const after = await layers.usage(layer);

      await qemuIo(layer.path, 'qcow2', 'read -P 0x11 32M 1M');
      await qemuIo(layer.path, 'qcow2', `read -P 0xcd ${MARKER_MIB}M 1M`);
      await qemuIo(layer.path, 'qcow2', `read -P 0xab 40M ${WRITE_BYTES}`);
      expect(await sha256(frozen)).toBe(frozenSha);
      expect(await sha256(rawSource)).toBe(rawSourceSha);
      expect(after.allocatedBytes - before.allocatedBytes).toBeGreaterThanOrEqual(WRITE_BYTES);
      expect(after.allocatedBytes - before.allocatedBytes).toBeLessThan(WRITE_BYTES + OVERHEAD_SLACK);
      await layers.removeLayer(layer);
    });
  });

  describe('copy driver', () => {
    it('makes a sparse full copy of a raw template whose writes never reach the template', async () => {
      const layers = await start({ driver: 'copy', vmm: 'firecracker' });
      const layer = await layers.createLayer('sbx-c1', { path: rawSource, format: 'raw' }, work);
      expect(layer).toMatchObject({ format: 'raw', driver: 'copy', path: join(work, 'sbx-c1-rootfs.raw') });
      expect(await sha256(layer.path)).toBe(rawSourceSha);
      const before = await layers.usage(layer);
      // Holes stay holes: the copy holds the template's data, not its virtual size.
      expect(before.allocatedBytes).toBeLessThan((RANDOM_MIB + 2) * MiB);
      expect(before.apparentBytes).toBe(IMAGE_MIB * MiB);

      await writeRaw(layer.path, 40 * MiB, WRITE_BYTES, 0xab);
      const after = await layers.usage(layer);
      expect(await sha256(rawSource)).toBe(rawSourceSha);
      expect((await readRaw(layer.path, 40 * MiB, 16)).every((b) => b === 0xab)).toBe(true);
      expect(after.allocatedBytes - before.allocatedBytes).toBeGreaterThanOrEqual(WRITE_BYTES);
      expect(after.allocatedBytes - before.allocatedBytes).toBeLessThan(WRITE_BYTES + OVERHEAD_SLACK);
      await layers.removeLayer(layer);
    });

    it('flattens a qcow2 template to raw once, next to it, and copies that', async () => {
      const layers = await start({ driver: 'copy', vmm: 'firecracker' });
      const overlay = join(work, 'template-copy.qcow2');
      await runHostCommand('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', rawSource, overlay]);
      await qemuIo(overlay, 'qcow2', 'write -P 0x22 24M 1M');
      const overlaySha = await sha256(overlay);

      const [first, second] = await Promise.all([
        layers.createLayer('sbx-c2', { path: overlay, format: 'qcow2' }, work),
        layers.createLayer('sbx-c3', { path: overlay, format: 'qcow2' }, work),
      ]);
      const flat = `${overlay}.flat.raw`;
      const flatIno = (await stat(flat)).ino;
      const third = await layers.createLayer('sbx-c4', { path: overlay, format: 'qcow2' }, work);
      expect((await stat(flat)).ino).toBe(flatIno);

      for (const layer of [first, second, third]) {
        expect(layer.format).toBe('raw');
        expect((await readRaw(layer.path, 24 * MiB, 16)).every((b) => b === 0x22)).toBe(true);
        expect((await readRaw(layer.path, MARKER_MIB * MiB, 16)).every((b) => b === 0xcd)).toBe(true);
      }
      await writeRaw(first.path, 24 * MiB, WRITE_BYTES, 0xab);
      expect((await readRaw(second.path, 24 * MiB, 16)).every((b) => b === 0x22)).toBe(true);
      expect(await sha256(overlay)).toBe(overlaySha);

      // A source rewritten in place (against the contract) is flattened afresh rather than served stale.
      await qemuIo(overlay, 'qcow2', 'write -P 0x44 24M 1M');
      const fourth = await layers.createLayer('sbx-c5', { path: overlay, format: 'qcow2' }, work);
      expect((await readRaw(fourth.path, 24 * MiB, 16)).every((b) => b === 0x44)).toBe(true);
      for (const layer of [first, second, third, fourth]) await layers.removeLayer(layer);
    });
  });

  describe('reflink driver on a loop-mounted xfs', () => {
    let xfs: LoopXfs | undefined;
    let xfsSource: string;
    let xfsSourceSha: string;

    beforeAll(async () => {
      xfs = await LoopXfs.create();
      xfsSource = join(xfs.mountPoint, 'template.raw');
      await makeRawImage(xfsSource, IMAGE_MIB, RANDOM_MIB, MARKER_MIB);
      xfsSourceSha = await sha256(xfsSource);
    });

    afterAll(async () => {
      await xfs?.release();
    });

    it('shares the template extents and owns only what the sandbox writes', async () => {
      const layers = await start({ driver: 'auto', vmm: 'firecracker' });
      const layer = await layers.createLayer('sbx-r1', { path: xfsSource, format: 'raw' }, xfs!.mountPoint);
      expect(layer).toMatchObject({ driver: 'reflink', format: 'raw' });
      expect(await sha256(layer.path)).toBe(xfsSourceSha);
      const before = await layers.usage(layer);
      expect(before.allocatedBytes).toBeLessThan(64 * 1024);

      // One MiB over the template's random data (shared extents) and one into a hole.
      await writeRaw(layer.path, 2 * MiB, WRITE_BYTES, 0xab);
      await writeRaw(layer.path, 40 * MiB, WRITE_BYTES, 0xab);
      const after = await layers.usage(layer);
      expect(await sha256(xfsSource)).toBe(xfsSourceSha);
      expect(after.allocatedBytes - before.allocatedBytes).toBeGreaterThanOrEqual(2 * WRITE_BYTES);
      expect(after.allocatedBytes - before.allocatedBytes).toBeLessThan(2 * WRITE_BYTES + OVERHEAD_SLACK);
      await layers.removeLayer(layer);
    });

    it('reflinks a qcow2 template through its cached raw flattening', async () => {
      const layers = await start({ driver: 'reflink', vmm: 'qemu' });
      const overlay = join(xfs!.mountPoint, 'template.qcow2');
      await runHostCommand('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', xfsSource, overlay]);
      await qemuIo(overlay, 'qcow2', 'write -P 0x33 24M 1M');
      const overlaySha = await sha256(overlay);

      const layer = await layers.createLayer('sbx-r2', { path: overlay, format: 'qcow2' }, xfs!.mountPoint);
      expect(layer).toMatchObject({ driver: 'reflink', format: 'raw' });
      expect((await readRaw(layer.path, 24 * MiB, 16)).every((b) => b === 0x33)).toBe(true);
      const before = await layers.usage(layer);
      expect(before.allocatedBytes).toBeLessThan(64 * 1024);
      await writeRaw(layer.path, 24 * MiB, WRITE_BYTES, 0xab);
      const after = await layers.usage(layer);
      expect(after.allocatedBytes - before.allocatedBytes).toBeGreaterThanOrEqual(WRITE_BYTES);
      expect(after.allocatedBytes - before.allocatedBytes).toBeLessThan(WRITE_BYTES + OVERHEAD_SLACK);
      expect(await sha256(overlay)).toBe(overlaySha);
      expect((await readRaw(`${overlay}.flat.raw`, 24 * MiB, 16)).every((b) => b === 0x33)).toBe(true);
      await layers.removeLayer(layer);
    });

    it('is refused where the filesystem cannot reflink, and auto falls back to a copy there', async () => {
      const strict = await start({ driver: 'reflink', vmm: 'firecracker' });
      await expect(strict.createLayer('sbx-r3', { path: rawSource, format: 'raw' }, work)).rejects.toBeInstanceOf(
        RootfsDriverUnavailableError,
      );
      // Across filesystems reflink is impossible even when the destination supports it.
      await expect(strict.createLayer('sbx-r4', { path: rawSource, format: 'raw' }, xfs!.mountPoint)).rejects.toBeInstanceOf(
        RootfsDriverUnavailableError,
      );
      const auto = await start({ driver: 'auto', vmm: 'firecracker' });
      const layer = await auto.createLayer('sbx-r5', { path: rawSource, format: 'raw' }, work);
      expect(layer.driver).toBe('copy');
      await auto.removeLayer(layer);
    });
  });

  describe('bad input', () => {
    it('answers with typed errors and never overwrites or deletes what is not a layer', async () => {
      const layers = await start({});
      const src = { path: rawSource, format: 'raw' as const };
      await expect(layers.createLayer('../escape', src, work)).rejects.toBeInstanceOf(InvalidLayerRequestError);
      await expect(layers.createLayer('sbx-e1', src, 'relative/dir')).rejects.toBeInstanceOf(InvalidLayerRequestError);
      await expect(layers.createLayer('sbx-e1', src, join(work, 'missing-dir'))).rejects.toBeInstanceOf(
        InvalidLayerRequestError,
      );
      await expect(layers.createLayer('sbx-e1', { path: join(work, 'nope.raw'), format: 'raw' }, work)).rejects.toBeInstanceOf(
        SourceImageNotFoundError,
      );
      await expect(layers.createLayer('sbx-e1', { path: rawSource, format: 'qcow2' }, work)).rejects.toBeInstanceOf(
        SourceFormatMismatchError,
      );

      const layer = await layers.createLayer('sbx-e2', src, work);
      await qemuIo(layer.path, 'qcow2', 'write -P 0xab 0 64k');
      await expect(layers.createLayer('sbx-e2', src, work)).rejects.toBeInstanceOf(LayerExistsError);
      await qemuIo(layer.path, 'qcow2', 'read -P 0xab 0 64k');

      await expect(layers.removeLayer({ path: rawSource, sandboxId: 'sbx-e2' })).rejects.toBeInstanceOf(
        InvalidLayerRequestError,
      );
      await expect(layers.removeLayer({ ...layer, sandboxId: 'someone-else' })).rejects.toBeInstanceOf(
        InvalidLayerRequestError,
      );
      expect(await sha256(rawSource)).toBe(rawSourceSha);
      await layers.removeLayer(layer);
      await layers.removeLayer(layer);
      await expect(stat(layer.path)).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('rejects unusable options when the module starts', async () => {
      await expect(layersWith({ driver: 'zfs' as never })).rejects.toBeInstanceOf(RootfsError);
      await expect(layersWith({ driver: 'qcow2', vmm: 'firecracker' })).rejects.toBeInstanceOf(RootfsError);
    });
  });
});
