/**
 * Issue 4's benchmark: sandbox create-from-snapshot → first stdout byte through the whole
 * host agent (gRPC CreateSandbox, network slot, disk layer, QEMU restore, guest /init, traffic
 * proxy, Connect Start) against a raw `qemu -incoming` restore of the same snapshot with no
 * platform around it (slot and layer made before the clock starts, Connect straight to the
 * slot), in one run. Also: creates per second with 4 concurrent requests, host PSS per idle
 * sandbox, and a cold boot for contrast.
 *
 * Run as root after `npm run build` and the guest image build:
 *   node tools/bench/run-bench.mjs tools/bench/host-agent-create.bench.ts
 * Env: BENCH_ITERATIONS (default 15), BENCH_CONCURRENT_TOTAL (default 12), BENCH_IDLE (default 6),
 * BENCH_COLD_BOOTS (default 1). Uses its own data dir (/var/lib/kiln-bench, sharing the built
 * templates), slot prefix kbha/kbrw and NATS-free registration; removes everything at the end.
 */
import 'reflect-metadata';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, symlinkSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Client, createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Process } from '@kiln/proto/process';
import { waitForGuestAgent } from '../../apps/host-agent/src/snapshot';
import { coldBootSpec } from '../../apps/host-agent/src/template';
import type { VmHandle } from '../../apps/host-agent/src/vmm';
import { hostAgentClient } from '../e2e/harness/host-agent-client';
import { percentile, report } from './support/sample-stats';
import { vmLayerForBench } from './support/vm-layer';

// Bundled into a temp dir by run-bench.mjs, so the repository is found from the working directory.
const ROOT = process.env.KILN_ROOT ?? process.cwd();
const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 15);
const CONCURRENT_TOTAL = Number(process.env.BENCH_CONCURRENT_TOTAL ?? 12);
const IDLE = Number(process.env.BENCH_IDLE ?? 6);
const COLD_BOOTS = Number(process.env.BENCH_COLD_BOOTS ?? 1);
const SHARED_DATA_DIR = process.env.KILN_DATA_DIR ?? '/var/lib/kiln';
const BENCH_DATA_DIR = '/var/lib/kiln-bench';



function envdProcess(baseUrl: string, headers: Record<string, string>): Client<typeof Process> {
  return createClient(
    Process,
    createConnectTransport({
      baseUrl,
      httpVersion: '1.1',
      interceptors: [(next) => async (req) => {
        for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
        return next(req);
      }],
    }),
  );
}

/** Time from `started` until the first stdout byte of `echo` arrives (the command is plain argv, no shell). */
async function firstStdoutByte(client: Client<typeof Process>, started: number): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    try {
      for await (const response of client.start({ process: { cmd: '/bin/echo', args: ['kiln'], envs: {} } }, { timeoutMs: 10_000 })) {
        const event = response.event?.event;
        if (event?.case === 'data' && event.value.output.case === 'stdout') return performance.now() - started;
      }
    } catch (error) {
      if (attempt > 400) throw error;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

async function pssMib(pid: number): Promise<number> {
  const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(/^Pss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? NaN) / 1024;
}

/** Mean time per CreateSandbox phase, from the agent's own histogram (includes the warm-up create). */
async function createPhases(httpPort: number): Promise<string> {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
  const value = (phase: string, kind: 'sum' | 'count') =>
    Number(new RegExp(`kiln_agent_sandbox_create_seconds_${kind}\\{[^}]*phase="${phase}"[^}]*\\} ([0-9.e+-]+)`).exec(text)?.[1] ?? NaN);
  const phases = ['prepare', 'restore', 'guest-init', 'total'].map((phase) => `${phase} ${((value(phase, 'sum') / value(phase, 'count')) * 1000).toFixed(1)} ms`);
  return `  agent-side mean per create: ${phases.join(', ')}`;
}

async function startHostAgent(ports: { http: number; grpc: number; proxy: number }): Promise<ChildProcess> {
  mkdirSync(BENCH_DATA_DIR, { recursive: true });
  for (const shared of ['templates', 'images', 'cache', 'vmm']) {
    const link = join(BENCH_DATA_DIR, shared);
    if (!existsSync(link) && existsSync(join(SHARED_DATA_DIR, shared))) symlinkSync(join(SHARED_DATA_DIR, shared), link);
  }
  const child = spawn('node', [join(ROOT, 'apps', 'host-agent', 'dist', 'main.js')], {
    env: {
      ...process.env,
      LOG_LEVEL: 'warn',
      HTTP_PORT: String(ports.http),
      GRPC_PORT: String(ports.grpc),
      PROXY_PORT: String(ports.proxy),
      KILN_DATA_DIR: BENCH_DATA_DIR,
      KILN_NETWORK_PREFIX: 'kbha',
      KILN_SLOT_CIDR: '10.205.0.0/24',
      KILN_NETWORK_PREFILL: '6',
      KILN_MAX_SANDBOXES: '24',
      KILN_HOST_ID: 'bench-host',
      HOST_REGISTRATION_TOKEN: `bench-${process.pid}-not-registered`,
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  for (let i = 0; i < 600; i++) {
    const ok = await fetch(`http://127.0.0.1:${ports.http}/health`).then((r) => r.status === 200, () => false);
    if (ok) return child;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('bench host agent did not become healthy');
}

async function main(): Promise<void> {
  const ports = { http: 39_410, grpc: 39_411, proxy: 39_412 };
  const workDir = await mkdtemp('/tmp/kiln-create-bench-');
  const { pool, layers, templates, probe, driver, snapshots } = vmLayerForBench({ slotPrefix: 'kbrw', slotCidr: '10.206.0.0/24', workDir });
  const live = new Set<VmHandle>();
  let agentProcess: ChildProcess | undefined;
  const agent = hostAgentClient(`127.0.0.1:${ports.grpc}`);
  try {
    await pool.init();
    const snapshot = await snapshots.ensure('base');
    console.log(`accelerator ${(await probe.report()).accelerator}; template base/${snapshot.build.buildId}, ${snapshot.manifest.memoryMib} MiB`);

    console.log('\n== baseline: raw qemu -incoming restore, no platform (slot + layer made before the clock) ==');
    const raw: number[] = [];
    for (let i = 0; i < ITERATIONS; i++) {
      const id = `kbrw-${i}`;
      const slot = await pool.acquire();
      const layer = await layers.createLayer(id, snapshot.disk, workDir);
      const started = performance.now();
      const vm = await snapshots.restore(snapshot, {
        id,
        stateDir: join(workDir, id),
        serialLogPath: join(workDir, `${id}.log`),
        rootDisk: { path: layer.path, format: layer.format },
        network: { netnsPath: slot.netnsPath, tapName: slot.tapName, guestMac: slot.guestMac },
      });
      live.add(vm);
      // The same readiness polling the platform does (fast, short per-try timeouts), then the command.
      await waitForGuestAgent(slot.hostAddress, snapshot.build.agentPort, { timeoutMs: 30_000, intervalMs: 2 });
      raw.push(await firstStdoutByte(envdProcess(`http://${slot.hostAddress}:49983`, {}), started));
      await vm.kill();
      live.delete(vm);
      await layers.removeLayer(layer);
      await pool.release(slot);
    }
    report('raw restore -> first stdout byte of echo', raw);

    agentProcess = await startHostAgent(ports);
    const proxy = `http://127.0.0.1:${ports.proxy}`;
    const create = async (id: string) =>
      agent.createSandbox({ sandboxId: id, templateId: 'base', buildId: '', vcpus: 1, memoryMib: 512, envVars: {}, metadata: {}, envdAccessToken: 'bench-token', timeoutSeconds: 300, teamId: 'bench' });
    await create('kbha-warmup');
    await agent.destroySandbox({ sandboxId: 'kbha-warmup' });

    console.log('\n== Kiln: gRPC CreateSandbox -> first stdout byte through the agent proxy ==');
    const kiln: number[] = [];
    for (let i = 0; i < ITERATIONS; i++) {
      const id = `kbha-${i}`;
      const started = performance.now();
      await create(id);
      kiln.push(await firstStdoutByte(envdProcess(proxy, { 'E2b-Sandbox-Id': id, 'X-Access-Token': 'bench-token' }), started));
      await agent.destroySandbox({ sandboxId: id });
    }
    report('Kiln create -> first stdout byte of echo', kiln);
    console.log(await createPhases(ports.http));
    console.log(`platform overhead at p50: ${(percentile(kiln, 50) - percentile(raw, 50)).toFixed(1)} ms (target <= 20 ms); ratio ${(percentile(kiln, 50) / percentile(raw, 50)).toFixed(2)}x`);

    console.log(`\n== throughput: ${CONCURRENT_TOTAL} creates, 4 concurrent requests ==`);
    const ids = Array.from({ length: CONCURRENT_TOTAL }, (_, i) => `kbha-c${i}`);
    const queue = [...ids];
    const started = performance.now();
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let id = queue.shift(); id; id = queue.shift()) await create(id);
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    console.log(`${CONCURRENT_TOTAL} sandboxes in ${seconds.toFixed(2)} s: ${(CONCURRENT_TOTAL / seconds).toFixed(2)} creates/s`);
    await Promise.all(ids.map((id) => agent.destroySandbox({ sandboxId: id })));

    console.log(`\n== host memory: ${IDLE} idle sandboxes ==`);
    const idle = Array.from({ length: IDLE }, (_, i) => `kbha-idle${i}`);
    for (const id of idle) await create(id);
    await new Promise((r) => setTimeout(r, 5_000));
    const pss = await Promise.all(idle.map(async (id) => pssMib((await agent.getSandbox({ sandboxId: id })).pid)));
    report(`PSS per idle ${snapshot.manifest.memoryMib} MiB sandbox (target <= 64 MiB)`, pss, { unit: 'MiB' });
    await Promise.all(idle.map((id) => agent.destroySandbox({ sandboxId: id })));

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
    agent.close();
    for (const vm of live) await vm.kill().catch(() => undefined);
    await pool.destroyAll().catch(() => undefined);
    if (agentProcess) {
      agentProcess.kill('SIGTERM');
      await new Promise((r) => agentProcess!.once('exit', r));
      spawnSync('node', [join(ROOT, 'apps', 'host-agent', 'dist', 'teardown.js')], {
        env: { ...process.env, KILN_DATA_DIR: BENCH_DATA_DIR, KILN_NETWORK_PREFIX: 'kbha', KILN_SLOT_CIDR: '10.205.0.0/24', LOG_LEVEL: 'warn' },
        stdio: 'inherit',
      });
    }
    await rm(workDir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
