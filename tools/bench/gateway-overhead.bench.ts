/**
 * Gateway overhead, measured without VMs: every number is paired with a same-run
 * baseline that skips the gateway.
 *
 *   1. API read  GET /sandboxes/{id}  (HTTP + API key + NATS + scheduler + Postgres)
 *      vs the same scheduler request over NATS from inside the gateway process.
 *   2. Exec round trip: official SDK `commands.run('true')` through the gateway's
 *      sandbox-traffic listener vs the SDK pointed straight at the guest agent.
 *   3. Exec throughput with 8 concurrent clients, through the gateway vs direct.
 *
 * The stack is private to the run (throwaway database, own nats-server and
 * redis-server, real scheduler in-process, the guest agent as a local process
 * standing in for a sandbox), like the gateway's tests. The gateway runs as its own
 * process (from source, like `node apps/gateway/dist/main.js`), so the client's
 * event loop is not shared with the proxy it measures.
 *
 * Run from the repository root (needs Postgres on 127.0.0.1:5432, nats-server and
 * redis-server binaries and the guest-agent bundle):
 *   npx nx run guest-agent:bundle
 *   node tools/bench/gateway-bench.mjs tools/bench/gateway-overhead.bench.ts
 * Env: BENCH_ITERATIONS (default 300), BENCH_CONCURRENCY (default 8).
 */
import 'reflect-metadata';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Sandbox } from 'e2b';
import { connect, JSONCodec } from 'nats';
import { Subjects } from '@kiln/messaging';
import { TestStack } from '../../apps/gateway/test/support/test-stack';
import { report } from './support/sample-stats';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 300);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 8);
const WARMUP = 20;
const GUEST_AGENT_BUNDLE = join(process.cwd(), 'apps', 'guest-agent', 'dist', 'bundle', 'guest-agent.js');
const TS_REGISTER = join(process.cwd(), 'tools', 'bench', 'gateway-ts-register.cjs');



async function sample(iterations: number, work: () => Promise<unknown>): Promise<number[]> {
  for (let i = 0; i < WARMUP; i++) await work();
  const samples: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    await work();
    samples.push(performance.now() - t0);
  }
  return samples;
}

async function throughput(label: string, clients: number, perClient: number, work: () => Promise<unknown>): Promise<void> {
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, async () => {
    for (let i = 0; i < perClient; i++) await work();
  }));
  const seconds = (performance.now() - t0) / 1000;
  console.log(`${label.padEnd(60)} ${((clients * perClient) / seconds).toFixed(1).padStart(8)} ops/s (${clients} clients x ${perClient})`);
}

/** Hands the guest agent its token, as the host agent does over the slot. */
async function initGuestAgent(url: string, accessToken: string): Promise<void> {
  const init = await fetch(`${url}/init`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ accessToken }) });
  if (init.status !== 204) throw new Error(`guest agent /init answered ${init.status}`);
}

async function startGuestAgent(): Promise<{ url: string; stop: () => void }> {
  const child = spawn(process.execPath, [GUEST_AGENT_BUNDLE, '--port', '0', '--host', '127.0.0.1', '--guest-duties', 'off'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on .*:(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`guest agent exited (${code}); build it with: npx nx run guest-agent:bundle`)));
  });
  const url = `http://127.0.0.1:${port}`;
  return { url, stop: () => child.kill('SIGTERM') };
}

/** The gateway as a separate process, from source; resolves once both listeners answer. */
async function startGatewayProcess(env: Record<string, string>): Promise<{ apiUrl: string; sandboxUrl: string; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, ['--conditions=development', '--require', TS_REGISTER, join(process.cwd(), 'apps', 'gateway', 'src', 'main.ts')], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, ...env },
  });
  const apiUrl = `http://127.0.0.1:${env.HTTP_PORT}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`gateway exited with ${child.exitCode}`);
    const up = await fetch(`${apiUrl}/health`).then((r) => r.ok, () => false);
    if (up) break;
    if (Date.now() > deadline) throw new Error('gateway did not become healthy within 60 s');
    await new Promise((r) => setTimeout(r, 200));
  }
  const stop = async () => {
    if (child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  };
  return { apiUrl, sandboxUrl: `http://127.0.0.1:${env.SANDBOX_PROXY_PORT}`, stop };
}

/** An SDK Sandbox object for an existing sandbox, aimed at `sandboxUrl` (the SDK's own option). */
function sdkSandbox(sandboxId: string, envdAccessToken: string, sandboxUrl: string): Sandbox {
  const SandboxCtor = Sandbox as unknown as new (opts: Record<string, unknown>) => Sandbox;
  return new SandboxCtor({ sandboxId, envdVersion: '0.5.7', envdAccessToken, sandboxUrl, apiKey: 'e2b_' + '0'.repeat(40) });
}

async function main(): Promise<void> {
  const agent = await startGuestAgent();
  const stack = await TestStack.start({ gateway: false });
  const env = await stack.gatewayEnv();
  const gateway = await startGatewayProcess(Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)])));
  const nats = await connect({ servers: stack.natsUrl });
  try {
    const team = await stack.seedTeam();
    const sandboxId = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: agent.url });
    const token = stack.tokens.envdAccessToken(sandboxId);
    await initGuestAgent(agent.url, token);
    console.log(`gateway overhead benchmark: ${ITERATIONS} iterations after ${WARMUP} warm-up, node ${process.version}`);

    console.log('\n== API read: GET /sandboxes/{id} ==');
    // The baseline speaks the scheduler's NATS request/reply (Nest's envelope) with a plain NATS client.
    const codec = JSONCodec<{ response?: unknown; err?: unknown }>();
    let requestId = 0;
    report('baseline: scheduler sandboxGet over NATS (no HTTP, no auth)', await sample(ITERATIONS, async () => {
      const reply = await nats.request(
        Subjects.sandboxGet,
        JSONCodec().encode({ pattern: Subjects.sandboxGet, data: { teamId: team.teamId, sandboxId }, id: String(++requestId) }),
        { timeout: 5_000 },
      );
      if (codec.decode(reply.data).err) throw new Error('scheduler answered an error');
    }));
    const headers = { 'x-api-key': team.apiKey };
    report('gateway: GET /sandboxes/{id}', await sample(ITERATIONS, async () => {
      const response = await fetch(`${gateway.apiUrl}/sandboxes/${sandboxId}`, { headers });
      if (response.status !== 200) throw new Error(`GET answered ${response.status}`);
      await response.arrayBuffer();
    }));

    console.log("\n== exec round trip: SDK commands.run('true') ==");
    const direct = sdkSandbox(sandboxId, token, agent.url);
    const viaGateway = sdkSandbox(sandboxId, token, gateway.sandboxUrl);
    report('baseline: SDK straight to the guest agent', await sample(ITERATIONS, () => direct.commands.run('true')));
    report('gateway: SDK through the sandbox-traffic listener', await sample(ITERATIONS, () => viaGateway.commands.run('true')));

    console.log(`\n== exec throughput, ${CONCURRENCY} concurrent clients ==`);
    const perClient = Math.max(1, Math.floor(ITERATIONS / CONCURRENCY));
    await throughput('baseline: straight to the guest agent', CONCURRENCY, perClient, () => direct.commands.run('true'));
    await throughput('gateway: through the sandbox-traffic listener', CONCURRENCY, perClient, () => viaGateway.commands.run('true'));
  } finally {
    await nats.close();
    await gateway.stop();
    await stack.stop();
    agent.stop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
