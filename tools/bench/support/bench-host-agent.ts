import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { hostAgentClient } from '../../e2e/harness/host-agent-client';
import { hostProxyRequestOptions, internalTlsEnv, internalTlsFiles, makeInternalTls } from '../../e2e/harness/internal-tls';
import { envdProcess } from './envd-process';

/**
 * A host agent process of its own for a benchmark: own ports, data dir (sharing the built templates), slot prefix
 * and CIDR, and no control plane (it never registers). With `internalTls` its gRPC and proxy speak internal mTLS as
 * in production, with a CA and certificates of its own in its data dir (reach its proxy with agentEnvd); without, plain
 * text. Stopping it runs the agent's teardown, which removes every VM, slot and layer it made.
 */

// Bundled into a temp dir by run-bench.mjs, so the repository is found from the working directory.
const ROOT = process.env.KILN_ROOT ?? process.cwd();
const SHARED_DATA_DIR = process.env.KILN_DATA_DIR ?? '/var/lib/kiln';
/** One per bench run: a bench agent restarted within the run opens the sandbox records it sealed before. */
const BENCH_HOST_STATE_KEY = randomBytes(32).toString('base64url');

export interface BenchAgent {
  name: string;
  process: ChildProcess;
  client: ReturnType<typeof hostAgentClient>;
  ports: { http: number; grpc: number; proxy: number };
  dataDir: string;
  prefix: string;
  cidr: string;
  /** The agent's internal CA and certificates when it speaks mTLS (its proxy answers only the gateway's, its gRPC the scheduler's). */
  tlsDir?: string;
}

/** envd's process service of a sandbox on `agent`, through the agent's own proxy as the gateway reaches it. */
export function agentEnvd(agent: BenchAgent, headers: Record<string, string>) {
  if (!agent.tlsDir) return envdProcess(`http://127.0.0.1:${agent.ports.proxy}`, headers);
  return envdProcess(`https://127.0.0.1:${agent.ports.proxy}`, headers, hostProxyRequestOptions(agent.tlsDir));
}

export async function metricsText(agent: BenchAgent): Promise<string> {
  return (await fetch(`http://127.0.0.1:${agent.ports.http}/metrics`)).text();
}

export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  let found = false;
  for (const line of text.split('\n')) {
    const match = /^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const have = Object.fromEntries((match[2] ?? '').split(',').filter(Boolean).map((kv) => kv.split('=').map((x) => x.replace(/"/g, ''))));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) {
      total += Number(match[3]);
      found = true;
    }
  }
  return found ? total : NaN;
}

/** Mean time per CreateSandbox phase for one clone source, from the agent's own histogram. */
export async function createPhases(agent: BenchAgent, clone: 'pooled' | 'restored'): Promise<string> {
  const text = await metricsText(agent);
  const mean = (phase: string) =>
    (metricValue(text, 'kiln_agent_sandbox_create_seconds_sum', { phase, clone }) / metricValue(text, 'kiln_agent_sandbox_create_seconds_count', { phase, clone })) * 1000;
  const phases = ['clone', 'record', 'egress', 'resume', 'guest-init', 'total'].map((phase) => `${phase} ${mean(phase).toFixed(1)} ms`);
  return `  ${agent.name}, agent-side mean per ${clone}-clone create: ${phases.join(', ')}`;
}

/** Waits until the agent's clone pool holds `size` clones again (it refills after every take). */
export async function poolRefilled(agent: BenchAgent, size: number): Promise<void> {
  const deadline = performance.now() + 30_000;
  while (metricValue(await metricsText(agent), 'kiln_agent_clone_pool_ready') < size) {
    if (performance.now() > deadline) throw new Error(`${agent.name}: clone pool did not refill to ${size}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startHostAgent(name: string, options: { ports: BenchAgent['ports']; dataDir: string; prefix: string; cidr: string; poolSize: number; env?: Record<string, string>; internalTls?: boolean }): Promise<BenchAgent> {
  mkdirSync(options.dataDir, { recursive: true });
  for (const shared of ['templates', 'images', 'cache', 'vmm']) {
    const link = join(options.dataDir, shared);
    if (!existsSync(link) && existsSync(join(SHARED_DATA_DIR, shared))) symlinkSync(join(SHARED_DATA_DIR, shared), link);
  }
  const tlsDir = options.internalTls ? join(options.dataDir, 'internal-tls') : undefined;
  if (tlsDir) makeInternalTls(tlsDir);
  const child = spawn('node', [join(ROOT, 'apps', 'host-agent', 'dist', 'main.js')], {
    env: {
      ...process.env,
      ...(tlsDir ? internalTlsEnv(tlsDir, 'host-agent') : {}),
      LOG_LEVEL: 'error',
      HTTP_PORT: String(options.ports.http),
      GRPC_PORT: String(options.ports.grpc),
      PROXY_PORT: String(options.ports.proxy),
      // Each bench agent's egress proxy needs a port of its own (the default is the dev stack's).
      KILN_EGRESS_PROXY_PORT: String(options.ports.proxy + 1),
      KILN_DATA_DIR: options.dataDir,
      KILN_NETWORK_PREFIX: options.prefix,
      KILN_SLOT_CIDR: options.cidr,
      KILN_NETWORK_PREFILL: '6',
      KILN_MAX_SANDBOXES: '24',
      KILN_CLONE_POOL_SIZE: String(options.poolSize),
      KILN_CLONE_POOL_WARM: process.env.BENCH_POOL_WARM ?? 'false',
      KILN_HOST_ID: `bench-${name}`,
      // Bench agents are driven over gRPC and never join a fleet: a join token no monitor minted keeps them out.
      KILN_JOIN_TOKEN: `bench-${process.pid}-not-registered`,
      KILN_HOST_STATE_KEY: BENCH_HOST_STATE_KEY,
      ...options.env,
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  for (let i = 0; i < 600; i++) {
    const ok = await fetch(`http://127.0.0.1:${options.ports.http}/health`).then((r) => r.status === 200, () => false);
    if (ok) return { name, process: child, client: hostAgentClient(`127.0.0.1:${options.ports.grpc}`, tlsDir ? internalTlsFiles(tlsDir, 'scheduler') : undefined), tlsDir, ...options };
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`bench host agent ${name} did not become healthy`);
}

export async function stopHostAgent(agent: BenchAgent): Promise<void> {
  agent.client.close();
  agent.process.kill('SIGTERM');
  await new Promise((r) => agent.process.once('exit', r));
  spawnSync('node', [join(ROOT, 'apps', 'host-agent', 'dist', 'teardown.js')], {
    env: { ...process.env, KILN_DATA_DIR: agent.dataDir, KILN_NETWORK_PREFIX: agent.prefix, KILN_SLOT_CIDR: agent.cidr, LOG_LEVEL: 'warn' },
    stdio: 'inherit',
  });
}

