/**
 * What the `base` template's package set (tools/guest-image/packages.txt, plus npm/npx beside node: the tools E2B's
 * base template offers) costs against a baseline package set, both built and measured in one run:
 *  - the image: rootfs size on disk, space used and left free for users, installed packages;
 *  - the template snapshot: allocated bytes of its memory file (the guest RAM the template touched before it was
 *    saved, what every clone maps), boot-to-agent time, and the guest's own /proc/meminfo read in a clone restored
 *    from it; BENCH_SNAPSHOTS fresh snapshots per set;
 *  - sandbox create: gRPC CreateSandbox on a host agent restoring on demand from the snapshot (KILN_CLONE_POOL_SIZE=0)
 *    until the first stdout byte of echo through the agent's proxy, and the VMM's host PSS after it;
 * The two sets are interleaved throughout (alternating which goes first), so load on a shared host hits both.
 * Every figure is printed as p50/p95 per set and as the candidate/baseline ratio.
 *
 * Baseline: the current tools/guest-image scripts with the package list of BENCH_BASELINE_REF (default: the last
 * commit before E2B's tool set), that ref's default rootfs size, and npm only if that ref's build copied it. So the
 * two images differ in the package set (and what came with it) only. Each set is built by build.sh into a data dir
 * of its own (both cached by input hash: a re-run with unchanged inputs only re-registers them), from one copy of
 * the guest agent bundle.
 *
 * Run as root, after `npx nx run guest-agent:bundle` and `npx nx run host-agent:build`:
 *   node tools/bench/run-bench.mjs tools/bench/base-template.bench.ts
 * Env: BENCH_ITERATIONS (creates per set, default 20), BENCH_SNAPSHOTS (snapshots per set, default 5),
 * BENCH_BASELINE_REF, BENCH_DATA_DIR (candidate, default /var/lib/kiln-bench-base-template), BENCH_BASELINE_DATA_DIR
 * (default <BENCH_DATA_DIR>-baseline), KILN_GUEST_AGENT_BUNDLE. Slot prefixes kbsb/kbsc/kbtb/kbtc
 * (10.216-10.219.0.0/24), agent ports 39450-39463; VMs, slots and layers are removed at the end, the data dirs
 * (images, snapshots) are kept for the next run.
 */
import 'reflect-metadata';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Client } from '@connectrpc/connect';
import type { Process } from '@kiln/proto/process';
import type { TemplateSnapshot } from '../../apps/host-agent/src/snapshot';
import { BenchAgent, agentEnvd, createPhases, startHostAgent, stopHostAgent } from './support/bench-host-agent';
import { envdProcess, firstStdoutByte } from './support/envd-process';
import { formatSamples, percentile } from './support/sample-stats';
import { benchCloneOptions, vmLayerForBench } from './support/vm-layer';

const ROOT = process.env.KILN_ROOT ?? process.cwd();
const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 20);
const SNAPSHOTS = Number(process.env.BENCH_SNAPSHOTS ?? 5);
/** The last commit whose base image had python3, git and curl only (no pip/venv/npm/wget/unzip/jq/build tools). */
const BASELINE_REF = process.env.BENCH_BASELINE_REF ?? 'af294276007f732a17105454b6ddbac5f4bc1701';
const DATA_DIR = process.env.BENCH_DATA_DIR ?? '/var/lib/kiln-bench-base-template';
const BASELINE_DATA_DIR = process.env.BENCH_BASELINE_DATA_DIR ?? `${DATA_DIR}-baseline`;
const MIB = 1024 * 1024;

type Samples = Record<string, number[]>;

interface PackageSet {
  name: 'baseline' | 'candidate';
  dataDir: string;
  templateDir: string;
  /** Scratch dir of the bench's own clones (state, serial logs, disk layers). */
  workDir: string;
  layer: ReturnType<typeof vmLayerForBench>;
  snapshot?: TemplateSnapshot;
  agent?: BenchAgent;
  samples: Samples;
}

function record(set: PackageSet, metric: string, value: number): void {
  (set.samples[metric] ??= []).push(value);
}

/** Runs build.sh from `guestImageDir` into `dataDir`; returns the template build dir it prints. */
function buildImage(label: string, guestImageDir: string, dataDir: string, env: Record<string, string>): string {
  const started = performance.now();
  const run = spawnSync('bash', [join(guestImageDir, 'build.sh')], {
    env: { ...process.env, KILN_DATA_DIR: dataDir, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
  });
  if (run.status !== 0) throw new Error(`${label}: build.sh exited with ${run.status}`);
  const templateDir = run.stdout.trim().split('\n').pop() ?? '';
  console.log(`${label}: ${templateDir} (build.sh ${((performance.now() - started) / 1000).toFixed(1)} s)`);
  return templateDir;
}

/** The baseline's guest-image dir: today's scripts, the package list of BASELINE_REF. */
function baselineGuestImage(scratch: string): { dir: string; env: Record<string, string> } {
  const dir = join(scratch, 'guest-image-baseline');
  mkdirSync(dir);
  for (const file of ['build.sh', 'initramfs-init.sh', 'guest-init.sh']) {
    writeFileSync(join(dir, file), readFileSync(join(ROOT, 'tools/guest-image', file)));
  }
  const show = (path: string) => execFileSync('git', ['-C', ROOT, 'show', `${BASELINE_REF}:${path}`], { encoding: 'utf8' });
  writeFileSync(join(dir, 'packages.txt'), show('tools/guest-image/packages.txt'));
  const refBuild = show('tools/guest-image/build.sh');
  const rootfsSize = /ROOTFS_SIZE=\$\{KILN_ROOTFS_SIZE:-([^}]+)\}/.exec(refBuild)?.[1];
  if (!rootfsSize) throw new Error(`no default KILN_ROOTFS_SIZE in ${BASELINE_REF}:tools/guest-image/build.sh`);
  return { dir, env: { KILN_ROOTFS_SIZE: rootfsSize, ...(refBuild.includes('KILN_NPM_DIR') ? {} : { KILN_NPM_DIR: 'none' }) } };
}

function imageStats(templateDir: string): Record<string, number> {
  const rootfs = join(templateDir, 'rootfs.ext4');
  const { size, blocks } = statSync(rootfs);
  const header = execFileSync('dumpe2fs', ['-h', rootfs], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(header)?.[1] ?? NaN);
  const blockSize = field('Block size');
  const status = execFileSync('debugfs', ['-R', 'cat /var/lib/dpkg/status', rootfs], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 64 * MIB });
  return {
    'rootfs size (MiB)': size / MIB,
    'rootfs allocated on the host (MiB)': (blocks * 512) / MIB,
    'ext4 used (MiB)': ((field('Block count') - field('Free blocks')) * blockSize) / MIB,
    'ext4 free for users, reserve excluded (MiB)': ((field('Free blocks') - field('Reserved block count')) * blockSize) / MIB,
    'Debian packages installed': (status.match(/^Status: install ok installed$/gm) ?? []).length,
  };
}

/**
 * Deletes the set's snapshot and makes a fresh one (cold boot, agent warm-up, save); then restores one clone of it
 * and reads the guest's /proc/meminfo: the guest's memory as the snapshot holds it, one sample per snapshot.
 */
async function freshSnapshot(set: PackageSet, n: number): Promise<void> {
  const { templates, snapshots, pool, layers } = set.layer;
  const build = await templates.resolve('base');
  await rm(build.snapshotDir, { recursive: true, force: true });
  const started = performance.now();
  const snapshot = await snapshots.ensure('base');
  record(set, 'snapshot: made in (ms)', performance.now() - started);
  record(set, 'snapshot: boot -> guest agent up (ms)', snapshot.manifest.timings.bootToAgentMs);
  record(set, 'snapshot: memory file allocated (MiB)', ((await stat(snapshot.memoryPath)).blocks * 512) / MIB);
  set.snapshot = snapshot;

  const id = `${set.name}-snap${n}`;
  const slot = await pool.acquire();
  const layer = await layers.createLayer(id, snapshot.disk, set.workDir);
  try {
    const vm = await snapshots.restore(snapshot, benchCloneOptions(set.workDir, id, slot, layer));
    try {
      const client = envdProcess(`http://${slot.hostAddress}:${snapshot.build.agentPort}`, {});
      await firstStdoutByte(client, performance.now());
      const meminfo = await commandOutput(client, 'cat /proc/meminfo');
      const mib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(meminfo)?.[1] ?? NaN) / 1024;
      record(set, 'guest at the snapshot: MemTotal - MemAvailable (MiB)', mib('MemTotal') - mib('MemAvailable'));
      record(set, 'guest at the snapshot: MemTotal - MemFree (MiB)', mib('MemTotal') - mib('MemFree'));
      record(set, 'guest at the snapshot: page cache, Cached (MiB)', mib('Cached'));
      record(set, 'guest at the snapshot: kernel slab, Slab (MiB)', mib('Slab'));
    } finally {
      await vm.kill();
    }
  } finally {
    await layers.removeLayer(layer);
    await pool.release(slot);
  }
}

async function commandOutput(client: Client<typeof Process>, command: string): Promise<string> {
  let out = '';
  for await (const response of client.start({ process: { cmd: '/bin/bash', args: ['-c', command], envs: {} } }, { timeoutMs: 60_000 })) {
    const event = response.event?.event;
    if (event?.case === 'data' && event.value.output.case === 'stdout') out += Buffer.from(event.value.output.value).toString();
  }
  return out;
}

/** One create: CreateSandbox -> first stdout byte of echo (through the agent's proxy), then the VMM's PSS; destroyed. */
async function measuredCreate(set: PackageSet, id: string, measure = true): Promise<void> {
  const agent = set.agent!;
  const snapshot = set.snapshot!;
  const started = performance.now();
  await agent.client.createSandbox({
    sandboxId: id, templateId: 'base', buildId: snapshot.build.buildId, vcpus: snapshot.manifest.vcpus, memoryMib: snapshot.manifest.memoryMib,
    envVars: {}, metadata: {}, envdAccessToken: 'bench-token', timeoutSeconds: 300, teamId: 'bench', egress: { allowOut: [], denyOut: [] }, snapshotId: '',
  });
  const firstByteMs = await firstStdoutByte(agentEnvd(agent, { 'E2b-Sandbox-Id': id, 'X-Access-Token': 'bench-token' }), started);
  try {
    if (!measure) return;
    record(set, 'create -> first stdout byte of echo (ms)', firstByteMs);
    const { pid } = await agent.client.getSandbox({ sandboxId: id });
    const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
    record(set, 'host: sandbox VMM PSS after the create (MiB)', Number(/^Pss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? NaN) / 1024);
  } finally {
    await agent.client.destroySandbox({ sandboxId: id });
  }
}

function compare(metric: string, baseline: number[], candidate: number[], digits = 1): void {
  const unit = /\((ms|MiB)\)$/.exec(metric)?.[1] ?? '';
  const label = metric.replace(/ \((ms|MiB)\)$/, '');
  console.log(formatSamples(`${label}, baseline`, baseline, { unit, digits, width: 64 }));
  console.log(formatSamples(`${label}, candidate`, candidate, { unit, digits, width: 64 }));
  const ratio = (p: number) => (percentile(candidate, p) / percentile(baseline, p)).toFixed(3);
  console.log(`${''.padEnd(64)} candidate/baseline: p50 ${ratio(50)}x, p95 ${ratio(95)}x`);
}

async function main(): Promise<void> {
  const scratch = mkdtempSync(join(tmpdir(), 'kiln-base-template-bench-'));
  const sets: PackageSet[] = [];
  try {
    // One copy of the agent bundle for both builds: a rebuild of the bundle mid-run cannot split them.
    const bundle = join(scratch, 'guest-agent-bundle');
    execFileSync('cp', ['-a', process.env.KILN_GUEST_AGENT_BUNDLE ?? join(ROOT, 'apps/guest-agent/dist/bundle'), bundle]);
    const baseline = baselineGuestImage(scratch);
    console.log(`== images (baseline: packages.txt of ${BASELINE_REF.slice(0, 12)}, ${JSON.stringify(baseline.env)}) ==`);
    const baselineDir = buildImage('baseline', baseline.dir, BASELINE_DATA_DIR, { ...baseline.env, KILN_GUEST_AGENT_BUNDLE: bundle });
    const candidateDir = buildImage('candidate', join(ROOT, 'tools/guest-image'), DATA_DIR, { KILN_GUEST_AGENT_BUNDLE: bundle });
    const baselineImage = imageStats(baselineDir);
    const candidateImage = imageStats(candidateDir);
    for (const key of Object.keys(baselineImage)) {
      const [b, c] = [baselineImage[key], candidateImage[key]];
      console.log(`${key.padEnd(48)} baseline ${b.toFixed(0).padStart(6)}   candidate ${c.toFixed(0).padStart(6)}   ratio ${(c / b).toFixed(3)}x`);
    }

    const workDir = join(scratch, 'vm');
    mkdirSync(workDir);
    for (const [name, dataDir, templateDir, slotPrefix, slotCidr] of [
      ['baseline', BASELINE_DATA_DIR, baselineDir, 'kbsb', '10.218.0.0/24'],
      ['candidate', DATA_DIR, candidateDir, 'kbsc', '10.219.0.0/24'],
    ] as const) {
      const setWorkDir = join(workDir, name);
      mkdirSync(setWorkDir);
      const layer = vmLayerForBench({ slotPrefix, slotCidr, workDir: setWorkDir, dataDir, bootTimeoutMs: 300_000 });
      await layer.pool.init();
      sets.push({ name, dataDir, templateDir, workDir: setWorkDir, layer, samples: {} });
    }
    console.log(`accelerator: ${(await sets[0].layer.probe.report()).accelerator}`);

    console.log(`\n== template snapshots: ${SNAPSHOTS} fresh ones per set, interleaved ==`);
    for (let i = 0; i < SNAPSHOTS; i++) {
      for (const set of i % 2 === 0 ? sets : [...sets].reverse()) await freshSnapshot(set, i);
    }

    const agentPorts = [
      { http: 39_450, grpc: 39_451, proxy: 39_452 },
      { http: 39_460, grpc: 39_461, proxy: 39_462 },
    ];
    for (const [i, set] of sets.entries()) {
      // The agent loads the snapshot made last; its own vmm dir, never a link to another data dir's.
      mkdirSync(join(set.dataDir, 'vmm'), { recursive: true });
      set.agent = await startHostAgent(set.name, { ports: agentPorts[i], dataDir: set.dataDir, prefix: i === 0 ? 'kbtb' : 'kbtc', cidr: i === 0 ? '10.216.0.0/24' : '10.217.0.0/24', poolSize: 0 });
      // The first create pays for lazy set-up (the snapshot's hash check, gRPC channel, proxy pools).
      await measuredCreate(set, `${set.agent.prefix}-warmup`, false);
      const manifest = JSON.parse(await readFile(join(set.snapshot!.dir, 'manifest.json'), 'utf8')) as { createdAt: string };
      if (manifest.createdAt !== set.snapshot!.manifest.createdAt) {
        throw new Error(`${set.name}: the agent remade the snapshot (stale apps/host-agent/dist? run npx nx run host-agent:build)`);
      }
    }

    console.log(`\n== sandbox create from the snapshot, restored on demand: ${ITERATIONS} per set, interleaved ==`);
    for (let i = 0; i < ITERATIONS; i++) {
      for (const set of i % 2 === 0 ? sets : [...sets].reverse()) await measuredCreate(set, `${set.agent!.prefix}-${i}`);
    }

    console.log('\n== results: p50 / p95 per set, candidate/baseline ratio ==');
    for (const metric of Object.keys(sets[0].samples)) compare(metric, sets[0].samples[metric], sets[1].samples[metric]);
    for (const set of sets) console.log(await createPhases(set.agent!, 'restored'));
  } finally {
    for (const set of sets) {
      if (set.agent) await stopHostAgent(set.agent);
      await set.layer.pool.destroyAll().catch(() => undefined);
    }
    rmSync(scratch, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
