/**
 * Issue 12's noisy-neighbour benchmark: does one sandbox running a fork bomb, a memory hog and a CPU spinner slow
 * down its neighbour on the same host, and does the host agent stay healthy?
 *
 * One host agent process (per-VM cgroups as configured: KILN_VMM_CGROUP, default auto), two sandboxes from `base`.
 * The neighbour's `commands.run('true')` equivalent (envd Process.Start of /bin/true, through the agent's proxy, to
 * the end of the stream) is timed while the other sandbox is quiet, then while it runs, as the unprivileged `user`:
 *   timeout N bash -c ':(){ :|:& };:'                       (fork bomb)
 *   timeout N sh -c 'while :; do :; done'                    (CPU spinner)
 *   timeout N sh -c 'head -c <2x RAM>M /dev/zero | tail'     (memory hog past the guest's RAM)
 * Everything stops by itself after N seconds (`timeout`, and the agent destroys both sandboxes at the end). The
 * agent's /health is polled every 250 ms throughout. Also printed: the noisy VM's cgroup limits and what it used
 * (peak memory charged beyond guest RAM is the measured VMM overhead, CPU throttling, peak tasks).
 *
 * Run as root after `npm run build` and the guest image build:
 *   node tools/bench/run-bench.mjs tools/bench/noisy-neighbour.bench.ts
 * Env: BENCH_SAMPLES (default 30 per phase), BENCH_NOISE_SECONDS (default 60).
 * Uses its own data dir (/var/lib/kiln-bench-noisy, sharing the built templates), slot prefix kbnn, 10.232.0.0/24.
 */
import 'reflect-metadata';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Client } from '@connectrpc/connect';
import { Process } from '@kiln/proto/process';
import { detectCgroupHost } from '../../apps/host-agent/src/cgroup';
import { startHostAgent, stopHostAgent, type BenchAgent } from './support/bench-host-agent';
import { envdProcess } from './support/envd-process';
import { percentile, report } from './support/sample-stats';
import { vmLayerForBench } from './support/vm-layer';

const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 30);
const NOISE_SECONDS = Number(process.env.BENCH_NOISE_SECONDS ?? 60);
const PREFIX = 'kbnn';

/** One `commands.run('true')`: Start /bin/true and read the stream to its end. */
async function runTrue(client: Client<typeof Process>): Promise<number> {
  const started = performance.now();
  for await (const response of client.start({ process: { cmd: '/bin/true', args: [], envs: {} } }, { timeoutMs: 60_000 })) void response;
  return performance.now() - started;
}

async function samplesOf(client: Client<typeof Process>, count: number, until = Infinity): Promise<number[]> {
  const samples: number[] = [];
  while (samples.length < count && performance.now() < until) samples.push(await runTrue(client));
  return samples;
}

/** PIDs of the QEMU processes of an agent's sandboxes (their clone directories are under its data dir). */
function qemuPids(dataDir: string): number[] {
  return execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => line.includes('qemu-system') && line.includes(`${dataDir}/clones/`))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

/** Polls /health until stopped: how many polls, how many not 200, the slowest answer. */
function watchHealth(agent: BenchAgent) {
  const result = { polls: 0, failures: [] as string[], slowestMs: 0 };
  let running = true;
  const done = (async () => {
    while (running) {
      const started = performance.now();
      const outcome = await fetch(`http://127.0.0.1:${agent.ports.http}/health`, { signal: AbortSignal.timeout(10_000) }).then(
        (r) => (r.status === 200 ? undefined : `status ${r.status}`),
        (error: Error) => error.message,
      );
      result.polls++;
      result.slowestMs = Math.max(result.slowestMs, performance.now() - started);
      if (outcome) result.failures.push(outcome);
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  return { result, stop: async () => ((running = false), await done) };
}

/** The v1/v2 group of a VMM process, with its limits and what it used so far. */
async function cgroupUsage(pid: number, guestMib: number): Promise<string> {
  const host = await detectCgroupHost();
  const lines = (await readFile(`/proc/${pid}/cgroup`, 'utf8')).split('\n');
  const pathOf = (controller: string) => lines.map((l) => /^\d+:([^:]*):(.*)$/.exec(l)).find((m) => m && (m[1]!.split(',').includes(controller) || (m[1] === '' && !host.v1Mounts.memory)))?.[2];
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) / 1024;
  const threads = /^Threads:\s+(\d+)/m.exec(status)?.[1];
  const qemu = `QEMU VmHWM ${kib('VmHWM').toFixed(0)} MiB (guest RAM ${guestMib} MiB), RssAnon ${kib('RssAnon').toFixed(0)} MiB, RssFile ${kib('RssFile').toFixed(0)} MiB, ${threads} threads`;
  const read = (dir: string | undefined, file: string) => (dir ? readFile(join(dir, file), 'utf8').then((t) => t.trim(), () => '?') : Promise.resolve('?'));
  // KILN_VMM_CGROUP=off: QEMU sits in the agent's own groups, whose figures are not the VM's.
  if (!/\/kiln-[^/]+\/vm-[^/]+$/.test(pathOf('memory') ?? '')) return `no per-VM cgroup (in ${pathOf('memory')}); ${qemu}`;
  if (host.v1Mounts.memory && host.v1Mounts.cpu && host.v1Mounts.pids) {
    const memory = join(host.v1Mounts.memory, pathOf('memory') ?? '');
    const cpu = join(host.v1Mounts.cpu, pathOf('cpu') ?? '');
    const pids = join(host.v1Mounts.pids, pathOf('pids') ?? '');
    const mib = async (file: string) => (Number(await read(memory, file)) / 2 ** 20).toFixed(0);
    const cpuStat = await read(cpu, 'cpu.stat');
    const throttled = `${/nr_throttled (\d+)/.exec(cpuStat)?.[1]} of ${/nr_periods (\d+)/.exec(cpuStat)?.[1]} periods, ${(Number(/throttled_time (\d+)/.exec(cpuStat)?.[1]) / 1e6).toFixed(0)} ms`;
    return [
      `cgroup v1 ${pathOf('memory')}: cpu quota ${await read(cpu, 'cpu.cfs_quota_us')}/${await read(cpu, 'cpu.cfs_period_us')} us (throttled ${throttled})`,
      `memory limit ${await mib('memory.limit_in_bytes')} MiB, peak charged ${await mib('memory.max_usage_in_bytes')} MiB (limit hits ${await read(memory, 'memory.failcnt')})`,
      `pids max ${await read(pids, 'pids.max')}, peak ${await read(pids, 'pids.peak')}`,
      qemu,
    ].join('\n  ');
  }
  const dir = host.v2 ? join(host.v2.mountPath, pathOf('memory') ?? '') : undefined;
  return [
    `cgroup v2 ${pathOf('memory')}: cpu.max ${await read(dir, 'cpu.max')}, ${(await read(dir, 'cpu.stat')).replace(/\n/g, ', ')}`,
    `memory.max ${await read(dir, 'memory.max')}, peak ${await read(dir, 'memory.peak')}, pids.max ${await read(dir, 'pids.max')} peak ${await read(dir, 'pids.peak')}`,
    qemu,
  ].join('\n  ');
}

async function main(): Promise<void> {
  const workDir = await mkdtemp('/tmp/kiln-noisy-bench-');
  const { pool, snapshots, probe } = vmLayerForBench({ slotPrefix: 'kbnx', slotCidr: '10.233.0.0/24', workDir });
  let agent: BenchAgent | undefined;
  try {
    const snapshot = await snapshots.ensure('base');
    const guestMib = snapshot.manifest.memoryMib;
    console.log(`accelerator ${(await probe.report()).accelerator}; template base/${snapshot.build.buildId}, ${snapshot.manifest.vcpus} vCPU, ${guestMib} MiB; KILN_VMM_CGROUP=${process.env.KILN_VMM_CGROUP ?? 'auto'}`);
    agent = await startHostAgent('noisy', { ports: { http: 39_530, grpc: 39_531, proxy: 39_532 }, dataDir: '/var/lib/kiln-bench-noisy', prefix: PREFIX, cidr: '10.232.0.0/24', poolSize: 0 });
    const create = (id: string) =>
      agent!.client.createSandbox({ sandboxId: id, templateId: 'base', buildId: snapshot.build.buildId, vcpus: snapshot.manifest.vcpus, memoryMib: guestMib, envVars: {}, metadata: {}, envdAccessToken: 'bench-token', timeoutSeconds: 600, teamId: 'bench', egress: { allowOut: [], denyOut: [] }, snapshotId: '' });
    const client = (id: string) => envdProcess(`http://127.0.0.1:${agent!.ports.proxy}`, { 'E2b-Sandbox-Id': id, 'X-Access-Token': 'bench-token' });
    const health = watchHealth(agent);
    await create('kbnn-neighbour');
    const before = qemuPids(agent.dataDir);
    await create('kbnn-noisy');
    const noisyPid = qemuPids(agent.dataDir).find((pid) => !before.includes(pid));
    const neighbour = client('kbnn-neighbour');
    await samplesOf(neighbour, 3); // warm-up: first commands pay for lazy set-up in guest and proxy

    console.log(`\n== neighbour: commands.run('true') (Start /bin/true to stream end), ${SAMPLES} samples per phase ==`);
    const quiet = await samplesOf(neighbour, SAMPLES);
    report('quiet (other sandbox idle)', quiet);
    const neighbourPid = before[0];
    if (neighbourPid) console.log(`neighbour VM after the quiet phase:\n  ${await cgroupUsage(neighbourPid, guestMib)}`);

    // The VMM's memory overhead: the guest touches all its RAM (tail grows until the guest's OOM killer stops it), so
    // QEMU's peak RSS is guest RAM + what QEMU itself holds (heap, device state, TCG translations, libraries).
    const hogMib = guestMib * 2;
    const fill = client('kbnn-noisy').start({ process: { cmd: '/bin/sh', args: ['-c', `head -c ${hogMib}M /dev/zero | tail; true`], envs: {} } }, { timeoutMs: 120_000 });
    for await (const response of fill) void response;
    if (noisyPid) console.log(`\nnoisy VM after its guest touched all its RAM (the VMM overhead):\n  ${await cgroupUsage(noisyPid, guestMib)}`);

    // The noise: started as the unprivileged default user; the stream is read in the background and ends by itself.
    const noise = [
      `timeout ${NOISE_SECONDS} bash -c ':(){ :|:& };:' 2>/dev/null &`,
      `timeout ${NOISE_SECONDS} sh -c 'while :; do :; done' &`,
      `timeout ${NOISE_SECONDS} sh -c 'head -c ${hogMib}M /dev/zero | tail' &`,
      'wait',
    ].join('\n');
    const noiseStarted = performance.now();
    const noiseDone = (async () => {
      try {
        for await (const response of client('kbnn-noisy').start({ process: { cmd: '/bin/bash', args: ['-c', noise], envs: {} } }, { timeoutMs: (NOISE_SECONDS + 60) * 1000 })) void response;
        return 'exited';
      } catch (error) {
        return `stream ended: ${(error as Error).message.slice(0, 120)}`;
      }
    })();
    // Let the fork bomb and the hog ramp up before measuring.
    await new Promise((r) => setTimeout(r, 5_000));
    const noisyPhaseEnd = noiseStarted + (NOISE_SECONDS - 2) * 1000;
    const loaded = await samplesOf(neighbour, SAMPLES, noisyPhaseEnd);
    report(`noisy (fork bomb + CPU spinner + ${hogMib} MiB memory hog next door)`, loaded);
    if (noisyPid) console.log(`noisy VM, under load:\n  ${await cgroupUsage(noisyPid, guestMib)}`);
    const noiseOutcome = await noiseDone;
    console.log(`noise ended after ${((performance.now() - noiseStarted) / 1000).toFixed(1)} s (${noiseOutcome})`);
    const after = await samplesOf(neighbour, Math.min(SAMPLES, 10));
    report('after (noise stopped)', after);
    if (neighbourPid) console.log(`neighbour VM at the end:\n  ${await cgroupUsage(neighbourPid, guestMib)}`);
    await health.stop();

    const ratio50 = percentile(loaded, 50) / percentile(quiet, 50);
    const ratio95 = percentile(loaded, 95) / percentile(quiet, 95);
    console.log(`\nnoisy/quiet ratio: p50 ${ratio50.toFixed(2)}x (target <= 2x), p95 ${ratio95.toFixed(2)}x`);
    // The host is shared: "after" shows how much of the difference is drift rather than the noisy neighbour.
    console.log(`noisy/after ratio: p50 ${(percentile(loaded, 50) / percentile(after, 50)).toFixed(2)}x, p95 ${(percentile(loaded, 95) / percentile(after, 95)).toFixed(2)}x`);
    console.log(`host agent /health: ${health.result.polls} polls, ${health.result.failures.length} not 200${health.result.failures.length ? ` (${[...new Set(health.result.failures)].slice(0, 3).join('; ')})` : ''}, slowest ${health.result.slowestMs.toFixed(0)} ms`);
    const answers = await Promise.race([samplesOf(client('kbnn-noisy'), 1).then(() => 'yes', (e: Error) => `no (${e.message.slice(0, 80)})`), new Promise((r) => setTimeout(() => r('no answer within 10 s'), 10_000))]);
    console.log(`noisy sandbox's own guest agent answers afterwards: ${answers}`);
    await agent.client.destroySandbox({ sandboxId: 'kbnn-noisy' });
    await agent.client.destroySandbox({ sandboxId: 'kbnn-neighbour' });
  } finally {
    if (agent) await stopHostAgent(agent);
    await pool.destroyAll();
    await rm(workDir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
