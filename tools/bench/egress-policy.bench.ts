/**
 * Issue 9's benchmark: what a sandbox's egress policy costs, measured in one run against a baseline from the same run.
 *  1. Create (gRPC CreateSandbox -> running, through one host agent with its clone pool) with a 50-rule policy vs none,
 *     interleaved, the pool refilled before each create. Target: <= 5 ms added at p50. Also the agent's own timing of
 *     the policy apply (it runs beside the guest's /init; slots are closed until it is done) and of every phase.
 *  2. A policy update on a running sandbox (UpdateSandboxNetwork: persist, then one nft transaction), p50/p95.
 *  3. HTTP from inside a sandbox through the egress proxy (the destination allowed by a domain rule, so TCP/80 is
 *     steered to the host's proxy) vs direct (the same destination allowed by an IP rule): per-request time on a new
 *     connection each (curl in the guest, `Connection: close`), and bulk throughput of one 64 MiB download.
 * The destination is a test host in a network namespace the bench creates (198.51.100.7, a documentation address).
 *
 * Run as root after `npm run build` and the guest image build:
 *   node tools/bench/run-bench.mjs tools/bench/egress-policy.bench.ts
 * Env: BENCH_ITERATIONS (default 15), BENCH_REQUESTS (default 40).
 * Uses its own data dir (/var/lib/kiln-bench-egress, sharing the built templates), slot prefix kbeg; removes
 * everything at the end.
 */
import 'reflect-metadata';
import { performance } from 'node:perf_hooks';
import type { EgressPolicy } from '@kiln/contracts';
import { runCommand } from '../e2e/harness/envd-client';
import { PUBLIC_HOST, TestInternet } from '../e2e/harness/test-internet';
import { BenchAgent, agentEnvd, createPhases, metricsText, metricValue, poolRefilled, startHostAgent, stopHostAgent } from './support/bench-host-agent';
import { percentile, report } from './support/sample-stats';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 15);
const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 40);
const POOL_SIZE = 2;
const TOKEN = 'bench-egress-token';
const NAME = 'bench.test';

const NO_POLICY: EgressPolicy = { allowOut: [], denyOut: [] };
/** 50 rules of the kinds users write: denied ranges, allowed addresses, and a few domain names. */
const FIFTY_RULES: EgressPolicy = {
  allowOut: [
    ...Array.from({ length: 20 }, (_, i) => `203.0.113.${i * 4}/30`),
    ...Array.from({ length: 5 }, (_, i) => `api${i}.example.com`),
    '*.pkg.example.org',
  ],
  denyOut: [...Array.from({ length: 23 }, (_, i) => `198.18.${i}.0/24`), '0.0.0.0/0'],
};

async function main(): Promise<void> {
  const internet = await TestInternet.start();
  let agent: BenchAgent | undefined;
  try {
    agent = await startHostAgent('egress', {
      ports: { http: 39_430, grpc: 39_431, proxy: 39_432 },
      dataDir: '/var/lib/kiln-bench-egress',
      prefix: 'kbeg',
      cidr: '10.208.0.0/24',
      poolSize: POOL_SIZE,
    });
    const host = await agent.client.hostInfo();
    const base = host.templates.find((t) => t.templateId === 'base');
    if (!base) throw new Error('the bench host agent has no base template');
    const create = (id: string, egress: EgressPolicy) =>
      agent!.client.createSandbox({
        sandboxId: id,
        templateId: 'base',
        buildId: base.buildId,
        vcpus: base.vcpus,
        memoryMib: base.memoryMib,
        envVars: {},
        metadata: {},
        envdAccessToken: TOKEN,
        timeoutSeconds: 300,
        teamId: 'bench',
        egress,
        snapshotId: '',
      });
    const shell = (id: string) => agentEnvd(agent!, { 'E2b-Sandbox-Id': id, 'X-Access-Token': TOKEN });
    console.log(`egress policy benchmark: host agent with a pool of ${POOL_SIZE}, ${host.acceleration === 2 ? 'TCG' : 'KVM'}, template base/${base.buildId}`);

    console.log(`\n== create -> running: no policy vs ${FIFTY_RULES.allowOut.length + FIFTY_RULES.denyOut.length} rules, interleaved ==`);
    const plain: number[] = [];
    const ruled: number[] = [];
    // The agent's own timing of the create phase that applies the policy (one nft transaction), per create.
    const egressPhaseSeconds = async () => metricValue(await metricsText(agent!), 'kiln_agent_sandbox_create_seconds_sum', { phase: 'egress' }) || 0;
    const plainApply: number[] = [];
    const ruledApply: number[] = [];
    await poolRefilled(agent, POOL_SIZE);
    await create('kbeg-warmup', NO_POLICY);
    await agent.client.destroySandbox({ sandboxId: 'kbeg-warmup' });
    for (let i = 0; i < ITERATIONS; i++) {
      for (const [samples, applySamples, egress, tag] of [
        [plain, plainApply, NO_POLICY, 'none'],
        [ruled, ruledApply, FIFTY_RULES, 'fifty'],
      ] as const) {
        await poolRefilled(agent, POOL_SIZE);
        const id = `kbeg-${tag}-${i}`;
        const applyBefore = await egressPhaseSeconds();
        const started = performance.now();
        await create(id, egress);
        samples.push(performance.now() - started);
        applySamples.push(((await egressPhaseSeconds()) - applyBefore) * 1000);
        await agent.client.destroySandbox({ sandboxId: id });
      }
    }
    report('create, no egress policy (baseline)', plain);
    report('create, 50-rule egress policy', ruled);
    console.log(`added by the policy at p50: ${(percentile(ruled, 50) - percentile(plain, 50)).toFixed(1)} ms (target <= 5 ms); ratio ${(percentile(ruled, 50) / percentile(plain, 50)).toFixed(3)}x`);
    report('  agent-side policy apply phase, no policy', plainApply);
    report('  agent-side policy apply phase, 50 rules', ruledApply);
    console.log(`  apply phase added by 50 rules at p50: ${(percentile(ruledApply, 50) - percentile(plainApply, 50)).toFixed(2)} ms`);
    // The rules go in while the guest agent takes its /init: they cost the create nothing while they take less.
    console.log(await createPhases(agent, 'pooled'));

    console.log('\n== policy update on a running sandbox (UpdateSandboxNetwork) ==');
    await poolRefilled(agent, POOL_SIZE);
    await create('kbeg-update', NO_POLICY);
    const updates: number[] = [];
    for (let i = 0; i < ITERATIONS * 2; i++) {
      const started = performance.now();
      await agent.client.updateSandboxNetwork({ sandboxId: 'kbeg-update', egress: i % 2 === 0 ? FIFTY_RULES : NO_POLICY });
      updates.push(performance.now() - started);
    }
    report('update, alternating none <-> 50 rules', updates);
    await agent.client.destroySandbox({ sandboxId: 'kbeg-update' });

    console.log(`\n== HTTP from inside a sandbox to ${PUBLIC_HOST}: through the egress proxy (domain rule) vs direct (IP rule) ==`);
    await poolRefilled(agent, POOL_SIZE);
    await create('kbeg-direct', { allowOut: [`${PUBLIC_HOST}/32`], denyOut: ['0.0.0.0/0'] });
    await poolRefilled(agent, POOL_SIZE);
    await create('kbeg-proxied', { allowOut: [NAME], denyOut: ['0.0.0.0/0'] });
    const curl = `curl -s --resolve ${NAME}:80:${PUBLIC_HOST}`;
    const perRequest = async (id: string) => {
      const result = await runCommand(shell(id), `${curl} -H 'Connection: close' -o /dev/null -w 'T%{time_total}\\n' "http://${NAME}/r[1-${REQUESTS}]" | grep ^T`);
      const samples = result.stdout.trim().split('\n').filter(Boolean).map((l) => Number(l.slice(1)) * 1000);
      if (samples.length !== REQUESTS) throw new Error(`${id}: ${samples.length} of ${REQUESTS} requests answered: ${result.stdout} ${result.stderr}`);
      return samples;
    };
    const bulk = async (id: string) => {
      const result = await runCommand(shell(id), `${curl} -o /dev/null -w '%{speed_download}' http://${NAME}/bytes/67108864`);
      return Number(result.stdout) / (1 << 20);
    };
    // Interleaved rounds, so drift on a shared host hits both paths alike.
    const direct: number[] = [];
    const proxied: number[] = [];
    const directMib: number[] = [];
    const proxiedMib: number[] = [];
    for (let round = 0; round < 3; round++) {
      direct.push(...(await perRequest('kbeg-direct')));
      proxied.push(...(await perRequest('kbeg-proxied')));
      directMib.push(await bulk('kbeg-direct'));
      proxiedMib.push(await bulk('kbeg-proxied'));
    }
    report('new connection + request, direct (baseline)', direct);
    report('new connection + request, through the egress proxy', proxied);
    console.log(`proxy cost per connection at p50: ${(percentile(proxied, 50) - percentile(direct, 50)).toFixed(2)} ms; ratio ${(percentile(proxied, 50) / percentile(direct, 50)).toFixed(2)}x`);
    report('64 MiB download, direct (baseline)', directMib, { unit: 'MiB/s' });
    report('64 MiB download, through the egress proxy', proxiedMib, { unit: 'MiB/s' });
    console.log(`proxy throughput ratio at p50: ${(percentile(proxiedMib, 50) / percentile(directMib, 50)).toFixed(2)}x`);
  } finally {
    if (agent) await stopHostAgent(agent);
    await internet.stop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
