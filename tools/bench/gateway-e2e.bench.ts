/**
 * End-to-end latency through the whole stack (gateway → scheduler → host agent →
 * microVM) with the official e2b SDK, each against a same-run baseline that asks the
 * host agent directly (gRPC CreateSandbox, then envd through the host agent's proxy):
 *
 *   1. Sandbox.create → first commands.run('true') completes   (p50/p95)
 *   2. exec round trip commands.run('true') on a live sandbox   (p50/p95)
 *   3. creates/s with BENCH_CONCURRENCY (8) clients, each create followed by a kill
 *
 * Needs the full stack: `npm run up` (as root), then from the repository root:
 *   set -a; source .kiln/dev.env; set +a
 *   node tools/bench/gateway-bench.mjs tools/bench/gateway-e2e.bench.ts
 * Env: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY (from .kiln/dev.env);
 *      HOST_AGENT_GRPC (default 127.0.0.1:50051), HOST_AGENT_PROXY_URL (default https://127.0.0.1:5007);
 *      KILN_INTERNAL_TLS_DIR (default .kiln/internal-tls): the dev stack's internal CA and certificates, since the
 *      host agent answers only mTLS; the baseline calls gRPC as the scheduler and its proxy as the gateway would.
 *      BENCH_TEMPLATE (default base), BENCH_ITERATIONS (default 10), BENCH_CONCURRENCY (default 8),
 *      BENCH_CREATES (creates per mode in the throughput phase, default 16), BENCH_SANDBOX_TIMEOUT_MS (default 120000).
 * Every sandbox it makes is killed (or destroyed on the host) before it exits, also on failure.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { Sandbox } from 'e2b';
import { GRPC_LOADER_OPTIONS, HOSTAGENT_PACKAGE, HOSTAGENT_PROTO_PATH } from '@kiln/proto';
import { grpcChannelCredentials, httpsAgentOptions, loadInternalTls } from '@kiln/config/internal-tls';
import { Agent as UndiciAgent, setGlobalDispatcher } from 'undici';
import { report } from './support/sample-stats';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 10);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 8);
const CREATES = Number(process.env.BENCH_CREATES ?? 16);
const TEMPLATE = process.env.BENCH_TEMPLATE ?? 'base';
const SANDBOX_TIMEOUT_MS = Number(process.env.BENCH_SANDBOX_TIMEOUT_MS ?? 120_000);
const HOST_AGENT_GRPC = process.env.HOST_AGENT_GRPC ?? '127.0.0.1:50051';
const HOST_AGENT_PROXY_URL = process.env.HOST_AGENT_PROXY_URL ?? 'https://127.0.0.1:5007';
const INTERNAL_TLS_DIR = process.env.KILN_INTERNAL_TLS_DIR ?? join(process.env.KILN_ROOT ?? process.cwd(), '.kiln', 'internal-tls');
const internalTls = (service: string) =>
  loadInternalTls({ caFile: join(INTERNAL_TLS_DIR, 'ca.pem'), certFile: join(INTERNAL_TLS_DIR, `${service}.pem`), keyFile: join(INTERNAL_TLS_DIR, `${service}-key.pem`) });
const ENVD_VERSION = '0.5.7';
const REQUEST_TIMEOUT_MS = 300_000;



// ---- baseline: the host agent on its own ----------------------------------------------------

type Unary<Req, Res> = (request: Req, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: Res) => void) => void;
interface HostAgentGrpc extends grpc.Client {
  createSandbox: Unary<Record<string, unknown>, { sandboxId: string }>;
  hostInfo: Unary<Record<string, never>, { templates: { templateId: string; buildId: string }[] }>;
  destroySandbox: Unary<{ sandboxId: string }, { existed: boolean }>;
}

function hostAgentClient(): HostAgentGrpc {
  const definition = loadSync(HOSTAGENT_PROTO_PATH, { ...GRPC_LOADER_OPTIONS, includeDirs: [...GRPC_LOADER_OPTIONS.includeDirs] });
  const root = grpc.loadPackageDefinition(definition) as unknown as Record<string, Record<string, Record<string, grpc.ServiceClientConstructor>>>;
  const [a, b, c] = HOSTAGENT_PACKAGE.split('.');
  const Ctor = (root[a] as unknown as Record<string, Record<string, Record<string, grpc.ServiceClientConstructor>>>)[b][c].HostAgent;
  return new Ctor(HOST_AGENT_GRPC, grpcChannelCredentials(internalTls('scheduler'), 'host-agent')) as unknown as HostAgentGrpc;
}

function call<Req, Res>(method: Unary<Req, Res>, client: grpc.Client, request: Req): Promise<Res> {
  return new Promise((resolve, reject) =>
    method.call(client, request, { deadline: Date.now() + REQUEST_TIMEOUT_MS }, (error, response) => (error ? reject(error) : resolve(response))),
  );
}

/** An SDK Sandbox for a sandbox the host agent made itself, talking to envd through the host agent's own proxy. */
function directSandbox(sandboxId: string, envdAccessToken: string): Sandbox {
  const SandboxCtor = Sandbox as unknown as new (opts: Record<string, unknown>) => Sandbox;
  return new SandboxCtor({ sandboxId, envdVersion: ENVD_VERSION, envdAccessToken, sandboxUrl: HOST_AGENT_PROXY_URL, requestTimeoutMs: REQUEST_TIMEOUT_MS });
}

class DirectHost {
  private readonly client = hostAgentClient();
  private readonly live = new Set<string>();
  private buildId: string | undefined;

  async createAndExec(): Promise<{ sandbox: Sandbox; id: string; createMs: number; totalMs: number }> {
    const id = `bench${randomBytes(8).toString('hex')}`;
    const token = randomBytes(16).toString('hex');
    // The host restores exactly the build it is given: the one it has for the template, as the scheduler would send.
    this.buildId ??= (await call(this.client.hostInfo, this.client, {})).templates.find((t) => t.templateId === TEMPLATE)?.buildId;
    if (!this.buildId) throw new Error(`the host agent has no build of template ${TEMPLATE}`);
    const t0 = performance.now();
    this.live.add(id);
    await call(this.client.createSandbox, this.client, {
      sandboxId: id,
      templateId: TEMPLATE,
      buildId: this.buildId,
      vcpus: 1,
      memoryMib: 512,
      envVars: {},
      metadata: { bench: 'gateway-e2e' },
      envdAccessToken: token,
      timeoutSeconds: Math.ceil(SANDBOX_TIMEOUT_MS / 1000),
      teamId: 'bench',
    });
    const createMs = performance.now() - t0;
    const sandbox = directSandbox(id, token);
    await sandbox.commands.run('true');
    return { sandbox, id, createMs, totalMs: performance.now() - t0 };
  }

  async destroy(id: string): Promise<void> {
    await call(this.client.destroySandbox, this.client, { sandboxId: id }).catch((e) => console.error(`destroy ${id}: ${String(e)}`));
    this.live.delete(id);
  }

  async close(): Promise<void> {
    for (const id of [...this.live]) await this.destroy(id);
    this.client.close();
  }
}

// ---- through the gateway ---------------------------------------------------------------------

class ThroughGateway {
  private readonly live = new Set<Sandbox>();

  async createAndExec(): Promise<{ sandbox: Sandbox; createMs: number; totalMs: number }> {
    const t0 = performance.now();
    const sandbox = await Sandbox.create(TEMPLATE, { timeoutMs: SANDBOX_TIMEOUT_MS, requestTimeoutMs: REQUEST_TIMEOUT_MS });
    this.live.add(sandbox);
    const createMs = performance.now() - t0;
    await sandbox.commands.run('true');
    return { sandbox, createMs, totalMs: performance.now() - t0 };
  }

  async kill(sandbox: Sandbox): Promise<void> {
    await sandbox.kill().catch((e) => console.error(`kill ${sandbox.sandboxId}: ${String(e)}`));
    this.live.delete(sandbox);
  }

  async close(): Promise<void> {
    for (const sandbox of [...this.live]) await this.kill(sandbox);
  }
}

async function throughput(label: string, creates: number, createAndDispose: () => Promise<number>): Promise<void> {
  const latencies: number[] = [];
  let next = 0;
  let failures = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < creates) {
        next++;
        try {
          latencies.push(await createAndDispose());
        } catch (error) {
          failures++;
          console.error(`${label}: ${String(error)}`);
        }
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  console.log(`${label.padEnd(62)} ${(latencies.length / seconds).toFixed(2).padStart(7)} creates/s  (${latencies.length} ok, ${failures} failed, ${CONCURRENCY} clients)`);
  report(`${label} — create latency under load`, latencies);
}

async function main(): Promise<void> {
  for (const name of ['E2B_API_URL', 'E2B_SANDBOX_URL', 'E2B_API_KEY']) {
    if (!process.env[name]) throw new Error(`${name} is not set: run \`set -a; source .kiln/dev.env; set +a\` after \`npm run up\``);
  }
  // The baseline's SDK reaches the host agent's proxy directly, which answers only the gateway's certificate. The SDK
  // takes no TLS options, so the process's fetch presents it (only https connections use it: the gateway's API is http).
  const proxyTls = httpsAgentOptions(internalTls('gateway'), 'host-agent');
  setGlobalDispatcher(new UndiciAgent({ connect: { ca: proxyTls.ca, cert: proxyTls.cert, key: proxyTls.key, checkServerIdentity: proxyTls.checkServerIdentity } }));
  console.log(`gateway e2e benchmark: template ${TEMPLATE}, ${ITERATIONS} iterations, gateway ${process.env.E2B_API_URL}, host agent ${HOST_AGENT_GRPC}`);
  const direct = new DirectHost();
  const gateway = new ThroughGateway();
  try {
    console.log("\n== Sandbox.create → first commands.run('true') ==");
    const directCreate: number[] = [];
    const directTotal: number[] = [];
    const gatewayCreate: number[] = [];
    const gatewayTotal: number[] = [];
    for (let i = 0; i < ITERATIONS; i++) {
      const d = await direct.createAndExec();
      directCreate.push(d.createMs);
      directTotal.push(d.totalMs);
      await direct.destroy(d.id);
      const g = await gateway.createAndExec();
      gatewayCreate.push(g.createMs);
      gatewayTotal.push(g.totalMs);
      await gateway.kill(g.sandbox);
    }
    report('baseline: host agent CreateSandbox', directCreate);
    report('baseline: host agent create + first exec', directTotal);
    report('gateway: Sandbox.create', gatewayCreate);
    report("gateway: Sandbox.create + first commands.run('true')", gatewayTotal);

    console.log("\n== exec round trip: commands.run('true') on a live sandbox ==");
    const d = await direct.createAndExec();
    const g = await gateway.createAndExec();
    const execDirect: number[] = [];
    const execGateway: number[] = [];
    for (let i = 0; i < Math.max(50, ITERATIONS * 10); i++) {
      let t0 = performance.now();
      await d.sandbox.commands.run('true');
      execDirect.push(performance.now() - t0);
      t0 = performance.now();
      await g.sandbox.commands.run('true');
      execGateway.push(performance.now() - t0);
    }
    report('baseline: through the host agent proxy', execDirect);
    report('gateway: through the sandbox-traffic listener', execGateway);
    await direct.destroy(d.id);
    await gateway.kill(g.sandbox);

    console.log(`\n== creates/s, ${CONCURRENCY} concurrent clients ==`);
    await throughput('baseline: host agent create + exec + destroy', CREATES, async () => {
      const r = await direct.createAndExec();
      await direct.destroy(r.id);
      return r.createMs;
    });
    await throughput('gateway: Sandbox.create + exec + kill', CREATES, async () => {
      const r = await gateway.createAndExec();
      await gateway.kill(r.sandbox);
      return r.createMs;
    });
  } finally {
    await gateway.close();
    await direct.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
