/**
 * Host-agent sandbox plumbing: network slots (build, acquire warm/cold, release) against a bare `ip netns add/del`
 * baseline, and rootfs layer creation per driver against a plain full copy of the same image, all in one run.
 *
 * Run as root:  node tools/bench/run-bench.mjs tools/bench/host-agent-slots-and-layers.bench.ts
 * Env: BENCH_ITERATIONS (default 40), BENCH_IMAGE_MIB (default 512, of which a quarter is written data).
 * Uses its own name prefix and slot block, and a loop-mounted xfs for reflink; removes all of it at the end.
 */
import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { runHostCommand } from '../../apps/host-agent/src/host-command/host-command';
import { NetworkSlotPool } from '../../apps/host-agent/src/network/network-slot-pool';
import { resolveNetworkOptions } from '../../apps/host-agent/src/network/network.options';
import { SlotProvisioner } from '../../apps/host-agent/src/network/slot-provisioner';
import { FlattenedImages } from '../../apps/host-agent/src/rootfs/flattened-images';
import { ReflinkSupport } from '../../apps/host-agent/src/rootfs/reflink-support';
import { RootfsLayers } from '../../apps/host-agent/src/rootfs/rootfs-layers';
import { resolveRootfsOptions, type RootfsOptions } from '../../apps/host-agent/src/rootfs/rootfs.options';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 40);
const IMAGE_MIB = Number(process.env.BENCH_IMAGE_MIB ?? 512);
const MiB = 1024 * 1024;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function report(label: string, samples: number[]): void {
  const sorted = [...samples].sort((a, b) => a - b);
  console.log(
    `${label.padEnd(58)} p50 ${percentile(sorted, 50).toFixed(2).padStart(8)} ms   p95 ${percentile(sorted, 95).toFixed(2).padStart(8)} ms   (n=${samples.length})`,
  );
}

async function timed<T>(samples: number[], work: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const result = await work();
  samples.push(performance.now() - t0);
  return result;
}

async function benchSlots(): Promise<void> {
  console.log('\n== network slots ==');
  const baseline: number[] = [];
  for (let i = 0; i < ITERATIONS; i++) {
    await timed(baseline, async () => {
      await runHostCommand('ip', ['netns', 'add', 'kbench-baseline']);
      await runHostCommand('ip', ['netns', 'del', 'kbench-baseline']);
    });
  }
  report('baseline: ip netns add + ip netns del', baseline);

  const options = resolveNetworkOptions({ namePrefix: 'kbench', slotCidr: '10.202.0.0/22', prefill: 0, maxIdle: ITERATIONS });
  const provisioner = new SlotProvisioner(options);
  const pool = new NetworkSlotPool(options, provisioner);
  await pool.init([]);
  try {
    const build: number[] = [];
    const destroy: number[] = [];
    for (let i = 0; i < ITERATIONS; i++) {
      await timed(build, () => provisioner.create(i));
      await timed(destroy, () => provisioner.destroy([i]));
    }
    report('slot build (netns, veth, tap, sysctl, nft rules)', build);
    report('slot destroy', destroy);

    const cold: number[] = [];
    const release: number[] = [];
    const held = [];
    for (let i = 0; i < ITERATIONS; i++) held.push(await timed(cold, () => pool.acquire()));
    report('acquire with an empty pool (built on demand)', cold);
    for (const slot of held) await timed(release, () => pool.release(slot));
    report('release (tap reset, rules, conntrack flush)', release);

    const warm: number[] = [];
    const again = [];
    for (let i = 0; i < ITERATIONS; i++) again.push(await timed(warm, () => pool.acquire()));
    report('acquire from the warm pool', warm);
    for (const slot of again) await pool.release(slot);
  } finally {
    await pool.destroyAll();
  }
}

async function makeImage(path: string): Promise<void> {
  const file = await open(path, 'w');
  try {
    await file.truncate(IMAGE_MIB * MiB);
    const chunk = randomBytes(4 * MiB);
    for (let off = 0; off < (IMAGE_MIB / 4) * MiB; off += chunk.length) await file.write(chunk, 0, chunk.length, off);
    await file.sync();
  } finally {
    await file.close();
  }
}

function layersFor(partial: Partial<RootfsOptions>): RootfsLayers {
  const options = resolveRootfsOptions(partial);
  return new RootfsLayers(options, new ReflinkSupport(), new FlattenedImages(options));
}

async function benchLayers(label: string, layers: RootfsLayers, source: string, dir: string): Promise<void> {
  const samples: number[] = [];
  for (let i = 0; i < Math.min(ITERATIONS, 20); i++) {
    const layer = await timed(samples, () => layers.createLayer(`bench-${i}`, { path: source, format: 'raw' }, dir));
    await layers.removeLayer(layer);
  }
  report(label, samples);
}

async function benchRootfs(): Promise<void> {
  console.log(`\n== rootfs layers (${IMAGE_MIB} MiB raw image, ${IMAGE_MIB / 4} MiB of data) ==`);
  const root = await mkdtemp(join(tmpdir(), 'kiln-bench-rootfs-'));
  let loop: string | undefined;
  const mnt = join(root, 'xfs');
  let mounted = false;
  try {
    const ext4Source = join(root, 'template.raw');
    await makeImage(ext4Source);

    const baseline: number[] = [];
    for (let i = 0; i < Math.min(ITERATIONS, 20); i++) {
      const target = join(root, `plain-${i}.raw`);
      await timed(baseline, () => runHostCommand('cp', ['--sparse=always', ext4Source, target]));
      await rm(target);
    }
    report('baseline: cp --sparse=always of the image (ext4)', baseline);
    await benchLayers('createLayer qcow2 overlay (ext4)', layersFor({ driver: 'qcow2' }), ext4Source, root);
    await benchLayers('createLayer sparse copy (ext4)', layersFor({ driver: 'copy', vmm: 'firecracker' }), ext4Source, root);

    const backing = join(root, 'xfs.img');
    const file = await open(backing, 'w');
    await file.truncate((IMAGE_MIB * 3 + 512) * MiB);
    await file.close();
    await runHostCommand('mkfs.xfs', ['-q', '-m', 'reflink=1', backing]);
    loop = (await runHostCommand('losetup', ['--find', '--show', backing])).stdout.trim();
    await mkdir(mnt);
    await runHostCommand('mount', ['-t', 'xfs', loop, mnt]);
    mounted = true;
    const xfsSource = join(mnt, 'template.raw');
    await makeImage(xfsSource);
    await benchLayers('createLayer reflink (loop xfs)', layersFor({ driver: 'reflink', vmm: 'firecracker' }), xfsSource, mnt);
  } finally {
    if (mounted) await runHostCommand('umount', [mnt]);
    if (loop) await runHostCommand('losetup', ['-d', loop]);
    await rm(root, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root: the benchmark creates namespaces and loop devices');
  await benchSlots();
  await benchRootfs();
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
