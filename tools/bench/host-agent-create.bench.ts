/**
 * Issue 4's benchmark: sandbox create-from-snapshot → first stdout byte through the whole
 * host agent (gRPC CreateSandbox, clone from the pool or restored on demand, record, resume,
 * guest /init, traffic proxy, Connect Start) against a raw `qemu -incoming` restore of the same
 * snapshot with no platform around it, in one run. Also: creates per second with 4 concurrent
 * requests, host PSS per idle sandbox and per pooled clone, and a cold boot for contrast.
 *
 * Two agent processes run side by side: one with its clone pool (the default configuration),
 * one with KILN_CLONE_POOL_SIZE=0 (every create restores on demand). The three paths are
 * measured interleaved (raw, pooled, on demand, raw, ...), so drift on a shared host hits all of
 * them alike. Before each measurement the bench waits until the pool is full again (the steady
 * state between creates), so no measurement overlaps a refill that an earlier one started; the
 * refill after a pooled create does overlap that sandbox's own first command, as in real use.
 *
 * Run as root after `npm run build` and the guest image build:
 *   node tools/bench/run-bench.mjs tools/bench/host-agent-create.bench.ts
 * Env: BENCH_ITERATIONS (default 15), BENCH_CONCURRENT_TOTAL (default 12), BENCH_IDLE (default 6),
 * BENCH_COLD_BOOTS (default 1), BENCH_POOL_WARM (the pooled agent's KILN_CLONE_POOL_WARM, default false as in the agent).
 * Uses its own data dirs (/var/lib/kiln-bench*, sharing the built
 * templates), slot prefixes kbha/kbod/kbrw and NATS-free registration; removes everything at the end.
 */
import 'reflect-metadata';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Client } from '@connectrpc/connect';
import { Process } from '@kiln/proto/process';
import { waitForGuestAgent } from '../../apps/host-agent/src/guest-agent-client';
import { coldBootSpec } from '../../apps/host-agent/src/template';
import type { VmHandle } from '../../apps/host-agent/src/vmm';
import { BenchAgent, agentEnvd, createPhases, metricsText, metricValue, poolRefilled, startHostAgent, stopHostAgent } from './support/bench-host-agent';
import { envdProcess, firstStdoutByte } from './support/envd-process';
import { percentile, report } from './support/sample-stats';
import { benchCloneOptions, vmLayerForBench } from './support/vm-layer';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 15);
const CONCURRENT_TOTAL = Number(process.env.BENCH_CONCURRENT_TOTAL ?? 12);
const IDLE = Number(process.env.BENCH_IDLE ?? 6);
const COLD_BOOTS = Number(process.env.BENCH_COLD_BOOTS ?? 1);
const POOL_SIZE = 2;

/** Runs a command to its end. */
async function runOnce(client: Client<typeof Process>, cmd: string, args: string[]): Promise<void> {
  for await (const response of client.start({ process: { cmd, args, envs: {} } }, { timeoutMs: 60_000 })) void response;
}

async function pssMib(pid: number): Promise<number> {
  const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(/^Pss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? NaN) / 1024;
}

/** PIDs of the QEMU processes holding pooled (not yet taken) clones under a data dir. */
function pooledClonePids(dataDir: string, taken: Set<number>): number[] {
  const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  return out
    .split('\n')
    .filter((line) => line.includes('qemu-system') && line.includes(`${dataDir}/clones/`))
    .map((line) => Number(line.trim().split(/\s+/)[0]))
    .filter((pid) => !taken.has(pid));
}

async function main(): Promise<void> {
  const workDir = await mkdtemp('/tmp/kiln-create-bench-');
  const { pool, layers, templates, probe, driver, snapshots } = vmLayerForBench({ slotPrefix: 'kbrw', slotCidr: '10.206.0.0/24', workDir });
  const live = new Set<VmHandle>();
  const agents: BenchAgent[] = [];
  try {
    await pool.init();
    const snapshot = await snapshots.ensure('base');
    console.log(`accelerator ${(await probe.report()).accelerator}; template base/${snapshot.build.buildId}, ${snapshot.manifest.memoryMib} MiB; pool of ${POOL_SIZE}, warm=${process.env.BENCH_POOL_WARM ?? 'false'}`);
    // The agents below get the default resolvers; a snapshot made with others makes every create rewrite resolv.conf.
    console.log(`resolvers in the snapshot: ${snapshot.manifest.guestNameservers.join(', ')}`);

    const pooled = await startHostAgent('pooled', { ports: { http: 39_410, grpc: 39_411, proxy: 39_412 }, dataDir: '/var/lib/kiln-bench', prefix: 'kbha', cidr: '10.205.0.0/24', poolSize: POOL_SIZE });
    agents.push(pooled);
    const onDemand = await startHostAgent('on-demand', { ports: { http: 39_420, grpc: 39_421, proxy: 39_422 }, dataDir: '/var/lib/kiln-bench-nopool', prefix: 'kbod', cidr: '10.207.0.0/24', poolSize: 0 });
    agents.push(onDemand);
    const create = (agent: BenchAgent, id: string) =>
      agent.client.createSandbox({ sandboxId: id, templateId: 'base', buildId: snapshot.build.buildId, vcpus: snapshot.manifest.vcpus, memoryMib: snapshot.manifest.memoryMib, envVars: {}, metadata: {}, envdAccessToken: 'bench-token', timeoutSeconds: 300, teamId: 'bench', egress: { allowOut: [], denyOut: [] }, snapshotId: '' });
    const kilnFirstByte = async (agent: BenchAgent, id: string) => {
      const started = performance.now();
      await create(agent, id);
      const ms = await firstStdoutByte(agentEnvd(agent, { 'E2b-Sandbox-Id': id, 'X-Access-Token': 'bench-token' }), started);
      await agent.client.destroySandbox({ sandboxId: id });
      return ms;
    };
    // One create each first: the agents' first request pays for lazy set-up (gRPC channel, proxy pools).
    await kilnFirstByte(pooled, 'kbha-warmup');
    await kilnFirstByte(onDemand, 'kbod-warmup');

    console.log('\n== create -> first stdout byte of echo: raw restore vs Kiln, interleaved ==');
    console.log('   raw: qemu -incoming restore of the same snapshot, no platform (slot + layer made before the clock),');
    console.log('        then Connect Start straight to the slot, retried every 5 ms until the guest answers');
    console.log('   Kiln: gRPC CreateSandbox (clone, record, resume, guest /init with token, env, clock, entropy)');
    console.log('        then Connect Start through the agent proxy with the access token');
    const raw: number[] = [];
    const kilnPooled: number[] = [];
    const kilnOnDemand: number[] = [];
    for (let i = 0; i < ITERATIONS; i++) {
      await poolRefilled(pooled, POOL_SIZE);
      const id = `kbrw-${i}`;
      const slot = await pool.acquire();
      const layer = await layers.createLayer(id, snapshot.disk, workDir);
      const started = performance.now();
      const vm = await snapshots.restore(snapshot, benchCloneOptions(workDir, id, slot, layer));
      live.add(vm);
      // Start straight away, retried every 5 ms while the guest's socket is not back: the quickest a client gets
      // a first byte from a restored guest (polling /health first costs a round trip).
      raw.push(await firstStdoutByte(envdProcess(`http://${slot.hostAddress}:49983`, {}), started));
      await vm.kill();
      live.delete(vm);
      await layers.removeLayer(layer);
      await pool.release(slot);

      await poolRefilled(pooled, POOL_SIZE);
      kilnPooled.push(await kilnFirstByte(pooled, `kbha-${i}`));
      await poolRefilled(pooled, POOL_SIZE);
      kilnOnDemand.push(await kilnFirstByte(onDemand, `kbod-${i}`));
    }
    report('raw restore -> first stdout byte', raw);
    report('Kiln, clone from the pool -> first stdout byte', kilnPooled);
    report('Kiln, clone restored on demand -> first stdout byte', kilnOnDemand);
    console.log(await createPhases(pooled, 'pooled'));
    console.log(await createPhases(onDemand, 'restored'));
    const rawP50 = percentile(raw, 50);
    for (const [label, samples] of [['pool (default)', kilnPooled], ['on demand (KILN_CLONE_POOL_SIZE=0)', kilnOnDemand]] as const) {
      const p50 = percentile(samples, 50);
      console.log(`platform overhead at p50, ${label}: ${(p50 - rawP50).toFixed(1)} ms (target <= 20 ms); ratio ${(p50 / rawP50).toFixed(2)}x`);
    }

    for (const agent of [pooled, onDemand]) {
      await poolRefilled(agent, agent === pooled ? POOL_SIZE : 0);
      const before = await metricsText(agent);
      console.log(`\n== throughput (${agent.name}): ${CONCURRENT_TOTAL} creates, 4 concurrent requests ==`);
      const ids = Array.from({ length: CONCURRENT_TOTAL }, (_, i) => `${agent.prefix}-c${i}`);
      const queue = [...ids];
      const started = performance.now();
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          for (let id = queue.shift(); id; id = queue.shift()) await create(agent, id);
        }),
      );
      const seconds = (performance.now() - started) / 1000;
      const after = await metricsText(agent);
      const hits = metricValue(after, 'kiln_agent_clone_pool_takes_total', { source: 'pool' }) - (metricValue(before, 'kiln_agent_clone_pool_takes_total', { source: 'pool' }) || 0);
      console.log(`${CONCURRENT_TOTAL} sandboxes in ${seconds.toFixed(2)} s: ${(CONCURRENT_TOTAL / seconds).toFixed(2)} creates/s (${hits || 0} of them from the pool)`);
      await Promise.all(ids.map((id) => agent.client.destroySandbox({ sandboxId: id })));
    }

    console.log(`\n== host memory: ${IDLE} idle sandboxes from each path, and the pool's own clones ==`);
    console.log('   PSS shares template pages among every process mapping them; all sandboxes below run at once.');
    const fromPool = Array.from({ length: IDLE }, (_, i) => `kbha-idle${i}`);
    for (const id of fromPool) {
      await poolRefilled(pooled, POOL_SIZE);
      await create(pooled, id);
    }
    const onDemandIdle = Array.from({ length: IDLE }, (_, i) => `kbod-idle${i}`);
    for (const id of onDemandIdle) await create(onDemand, id);
    // One of the on-demand sandboxes runs one command (the SDK's shape), to show what use costs.
    const used = onDemandIdle[0];
    await runOnce(agentEnvd(onDemand, { 'E2b-Sandbox-Id': used, 'X-Access-Token': 'bench-token' }), '/bin/bash', ['-l', '-c', 'true']);
    await poolRefilled(pooled, POOL_SIZE);
    await new Promise((r) => setTimeout(r, 5_000));
    const pidOf = async (agent: BenchAgent, id: string) => (await agent.client.getSandbox({ sandboxId: id })).pid;
    const poolPids = await Promise.all(fromPool.map((id) => pidOf(pooled, id)));
    const onDemandPids = await Promise.all(onDemandIdle.slice(1).map((id) => pidOf(onDemand, id)));
    report(`PSS, idle ${snapshot.manifest.memoryMib} MiB sandbox restored on demand (target <= 64)`, await Promise.all(onDemandPids.map(pssMib)), { unit: 'MiB' });
    report(`PSS, idle ${snapshot.manifest.memoryMib} MiB sandbox from the pool`, await Promise.all(poolPids.map(pssMib)), { unit: 'MiB' });
    report('PSS, on-demand sandbox after one bash -l command', [await pssMib(await pidOf(onDemand, used))], { unit: 'MiB' });
    report('PSS, paused clone waiting in the pool', await Promise.all(pooledClonePids(pooled.dataDir, new Set(poolPids)).map(pssMib)), { unit: 'MiB' });
    await Promise.all(fromPool.map((id) => pooled.client.destroySandbox({ sandboxId: id })));
    await Promise.all(onDemandIdle.map((id) => onDemand.client.destroySandbox({ sandboxId: id })));

    if (COLD_BOOTS > 0) {
      console.log('\n== contrast: cold boot of the same template ==');
      const base = await templates.resolve('base');
      const cold: number[] = [];
      for (let i = 0; i < COLD_BOOTS; i++) {
        const id = `kbrw-cold${i}`;
        const slot = await pool.acquire();
        const layer = await layers.createLayer(id, base.rootfs, workDir);
        const t0 = performance.now();
        const vm = await driver.spawn(
          coldBootSpec(base, { id, rootDisk: { path: layer.path, format: layer.format }, slot, stateDir: join(workDir, id), serialLogPath: join(workDir, `${id}.log`) }),
        );
        live.add(vm);
        await waitForGuestAgent(slot.hostAddress, base.agentPort, { timeoutMs: 180_000, intervalMs: 20 });
        cold.push(await firstStdoutByte(envdProcess(`http://${slot.hostAddress}:49983`, {}), t0));
        await vm.kill();
        live.delete(vm);
        await layers.removeLayer(layer);
        await pool.release(slot);
      }
      report('cold boot -> first stdout byte of echo', cold);
    }
  } finally {
    for (const vm of live) await vm.kill().catch(() => undefined);
    await pool.destroyAll().catch(() => undefined);
    for (const agent of agents) await stopHostAgent(agent);
    await rm(workDir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
