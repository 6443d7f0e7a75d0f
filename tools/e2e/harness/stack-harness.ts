import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import 'reflect-metadata';
import { ApiKeyRepository, PrismaService, TeamRepository, TemplateRepository } from '@kiln/db';
import { createTestDatabase } from '@kiln/db/testing';
import { ENVD_COMPAT_VERSION } from '@kiln/contracts';
import { NatsUser, generateKilnNatsUsers, hostAgentNatsUser, mintJoinToken, natsCredentialsEnv, renderNatsServerConfig } from '@kiln/messaging';
import { freePort, waitForPort } from '@kiln/testing';
import { hostAgentClient } from './host-agent-client';
import { internalTlsEnv, internalTlsFiles, makeInternalTls } from './internal-tls';
import { OPENED_PRIVATE_RANGE } from './test-internet';

export const ROOT = join(__dirname, '..', '..', '..');
export const STACK_FILE = join(ROOT, '.kiln', 'e2e', 'stack.json');
/** The network plumbing of host agents in namespaces of their own, shared with `npm run up -- --agents N`. */
const FLEET_SCRIPT = join(ROOT, 'tools', 'stack', 'fleet.sh');
/** A test fleet's agent links: 10.235.<n>.0/30 (agent n at .2), its control address (NATS) 10.235.0.1. */
const FLEET_E2E_NET = '10.235';
/** A test fleet's agent n gets the slot block 10.234.<16·n>.0/20. */
const FLEET_E2E_SLOT_NET = '10.234';
const FLEET_MAX_AGENTS = 9;
const SHARED_DATA_DIR = process.env.KILN_DATA_DIR ?? '/var/lib/kiln';
/** Sandboxes' resolver in the e2e stack: an address inside a namespace the host-agent suite creates. */
export const E2E_NAMESERVER = '10.254.53.1';
/** The suite's own host-agent state: separate from a dev stack's, sharing only the built templates. */
const E2E_DATA_DIR = '/var/lib/kiln-e2e';

/** What makes one test stack distinct from another on the same machine (and from a dev stack). */
export interface StackOptions {
  /** Names its run folder (`.kiln/<name>/run`) and its team. */
  name: string;
  dataDir: string;
  networkPrefix: string;
  slotCidr: string;
  /** Where the stack file goes; the default stack's is STACK_FILE. */
  stackFile: string;
  /**
   * Dependencies the caller runs (a fault suite's restartable servers). Absent: a private NATS, a throwaway
   * database on the machine's Postgres and a private Redis with a password.
   */
  dependencies?: {
    natsUrl: string;
    /** The users that NATS admits (its config: renderNatsServerConfig of these, hosts: stackHostId(name)). */
    natsUsers: NatsUser[];
    databaseUrl: string;
    redisUrl: string;
  };
  /** Extra settings for every app (e.g. a shorter create deadline chain). */
  commonEnv?: Record<string, string>;
  /** Extra host-agent settings (every agent's; they override the fleet's per-agent defaults). */
  hostAgentEnv?: Record<string, string>;
  /**
   * Host agents (default 1: one agent in the root network namespace on 127.0.0.1, network prefix and slot CIDR as
   * given). More (at most 9): a fleet, agent n (1..N) in network namespace <networkPrefix>fl<n> reached at
   * 10.235.<n>.2 (tools/stack/fleet.sh, with links <networkPrefix>f<n>h/a), network prefix <networkPrefix><n>, slot
   * block 10.234.<16·n>.0/20 and data dir <dataDir>/fleet/a<n>; the stack's NATS then listens on 10.235.0.1. One
   * fleet at a time per machine (the link CIDRs are fixed); it coexists with a dev stack's (10.239).
   */
  agents?: number;
  /** Scheduler replicas (default 1): `scheduler`, `scheduler-2`, ... */
  schedulers?: number;
}

/** The stack stack-e2e's suites share (global setup). */
export const E2E_STACK: StackOptions = {
  name: 'e2e',
  dataDir: E2E_DATA_DIR,
  networkPrefix: 'ke2e',
  slotCidr: '10.201.0.0/20',
  stackFile: STACK_FILE,
  hostAgentEnv: {
    // The security suite's "operator-opened" private range (test hosts in a namespace it owns).
    KILN_EGRESS_OPEN_RANGES: OPENED_PRIVATE_RANGE,
    // The DNS server the host-agent and security suites run in namespaces of their own (E2E_NAMESERVER).
    KILN_GUEST_NAMESERVERS: E2E_NAMESERVER,
  },
};

/** One host agent of a stack. */
export interface StackAgent {
  /** Its key in `pids` and `appEnvs`: `host-agent` alone, `host-agent-<n>` in a fleet. */
  app: string;
  hostId: string;
  /** Where the control plane reaches it: 127.0.0.1 alone, 10.235.<n>.2 in a fleet. */
  address: string;
  grpcAddress: string;
  proxyUrl: string;
  httpUrl: string;
  dataDir: string;
  networkPrefix: string;
  slotCidr: string;
  /** In a fleet: its number n (1..N), which names its namespace and links. */
  fleetIndex?: number;
}

/** A fleet's plumbing names (tools/stack/fleet.sh's environment). */
export interface StackFleet {
  netnsPrefix: string;
  linkPrefix: string;
  net: string;
  controlAddress: string;
}

export interface StackInfo {
  apiUrl: string;
  sandboxUrl: string;
  apiKey: string;
  otherTeamApiKey: string;
  teamId: string;
  databaseUrl: string;
  /** Set when the stack made its own database (dropped by stopStack). */
  databaseName?: string;
  natsUrl: string;
  /** The NATS users (and passwords) of the stack's apps: its NATS admits no one else. */
  natsUsers: NatsUser[];
  redisUrl: string;
  /** The first host agent (agents[0]). */
  hostAgent: { grpcAddress: string; proxyUrl: string; httpUrl: string; hostId: string };
  /** Every host agent; tests address them by index (0-based) in killAgent, startAgent, partitionAgent, healAgent. */
  agents: StackAgent[];
  /** Set when the agents run in namespaces of their own. */
  fleet?: StackFleet;
  /** Base URL of each scheduler replica's HTTP port (health, metrics). */
  schedulerHttpUrls: string[];
  domain: string;
  dataDir: string;
  networkPrefix: string;
  slotCidr: string;
  stackFile: string;
  pids: Record<string, number>;
  runDir: string;
  /** HTTP ports of every app (health and metrics). */
  httpPorts: Record<string, number>;
  /** Full environment the (first) host agent was started with, so a test can restart it. */
  hostAgentEnv: Record<string, string>;
  /** The key join tokens are minted with (the host monitor's HOST_JOIN_TOKEN_KEY): startAgent mints a fresh one. */
  joinTokenKey: string;
  /**
   * The stack's internal CA and certificates (internal-tls.ts): the host agent's gRPC and proxy answer only mTLS.
   * A test calls them with internalTlsFiles(stack.internalTlsDir, 'scheduler') or hostProxyDispatcher(stack.internalTlsDir).
   */
  internalTlsDir: string;
  /** Full environment of every app, so a test can restart any of them. */
  appEnvs: Record<string, Record<string, string>>;
}

async function waitHealthy(name: string, url: string, child: ChildProcess, logPath: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}; log ${logPath}:\n${tail(logPath)}`);
    try {
      const res = await fetch(`${url}/health`);
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${name} not healthy within ${timeoutMs} ms; log ${logPath}:\n${tail(logPath)}`);
}

function tail(path: string): string {
  try {
    return readFileSync(path, 'utf8').split('\n').slice(-15).join('\n');
  } catch {
    return '(no log)';
  }
}

function startProcess(command: string, args: string[], env: NodeJS.ProcessEnv, logPath: string): ChildProcess {
  const log = createWriteStream(logPath, { flags: 'a' });
  const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  child.stdout?.pipe(log);
  child.stderr?.pipe(log);
  child.unref();
  return child;
}

function prepareDataDir(dataDir: string): void {
  mkdirSync(dataDir, { recursive: true });
  // Each run has a fresh database, where no host has a credential yet: the agent joins with its join token again.
  rmSync(join(dataDir, 'host-credential'), { force: true });
  for (const shared of ['images', 'cache', 'vmm']) {
    const link = join(dataDir, shared);
    if (!existsSync(link) && existsSync(join(SHARED_DATA_DIR, shared))) symlinkSync(join(SHARED_DATA_DIR, shared), link);
  }
  // The built-in templates (base) are shared; templates the suites build are the stack's own, as are its artifact
  // store and build cache: an earlier run's (or an older layout's link to the shared dir) are dropped.
  const templates = join(dataDir, 'templates');
  if (lstatSync(templates, { throwIfNoEntry: false })?.isSymbolicLink()) rmSync(templates);
  mkdirSync(templates, { recursive: true });
  for (const entry of readdirSync(templates, { withFileTypes: true })) {
    if (!entry.isSymbolicLink()) rmSync(join(templates, entry.name), { recursive: true, force: true });
  }
  for (const builtIn of existsSync(join(SHARED_DATA_DIR, 'templates')) ? readdirSync(join(SHARED_DATA_DIR, 'templates')) : []) {
    const link = join(templates, builtIn);
    if (!existsSync(link)) symlinkSync(join(SHARED_DATA_DIR, 'templates', builtIn), link);
  }
  for (const own of ['artifacts', 'build-cache']) rmSync(join(dataDir, own), { recursive: true, force: true });
}

/** The host id of a stack's host agent (its NATS user is hostAgentNatsUser of it). */
export function stackHostId(stackName: string): string {
  return `${stackName}-host`;
}

/** The host id of a fleet's agent n (1..N). */
export function fleetHostId(stackName: string, n: number): string {
  return `${stackName}-a${n}`;
}

/** The host id of a stack's agent by index (0-based). */
export function hostIdOf(info: Pick<StackInfo, 'agents'>, index: number): string {
  return agentAt(info, index).hostId;
}

function agentAt(info: Pick<StackInfo, 'agents'>, index: number): StackAgent {
  const agent = info.agents[index];
  if (!agent) throw new Error(`the stack has no host agent ${index} (it has ${info.agents.length}; indexes are 0-based)`);
  return agent;
}

/** A fleet's names, derived from the stack's network prefix so a test fleet's cannot be a dev stack's (kilnfl, kfl). */
function fleetOf(networkPrefix: string): StackFleet {
  return { netnsPrefix: `${networkPrefix}fl`, linkPrefix: `${networkPrefix}f`, net: FLEET_E2E_NET, controlAddress: `${FLEET_E2E_NET}.0.1` };
}

function fleetEnv(fleet: StackFleet): Record<string, string> {
  return { FLEET_NETNS_PREFIX: fleet.netnsPrefix, FLEET_LINK_PREFIX: fleet.linkPrefix, FLEET_NET: fleet.net };
}

/** Runs tools/stack/fleet.sh (ensure, remove, partition, heal ...) for this fleet. */
function fleetCommand(fleet: StackFleet, args: string[]): void {
  execFileSync('bash', [FLEET_SCRIPT, ...args], { env: { ...process.env, ...fleetEnv(fleet) }, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Whether something accepts TCP connections at host:port. */
async function waitForAddress(host: string, port: number, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, host);
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`${what} did not listen on ${host}:${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The stack's agents: where each runs and what it is called (ports are filled in by startStack). */
function planAgents(options: StackOptions, fleet: StackFleet | undefined): Array<Omit<StackAgent, 'grpcAddress' | 'proxyUrl' | 'httpUrl'>> {
  if (!fleet) {
    return [{ app: 'host-agent', hostId: stackHostId(options.name), address: '127.0.0.1', dataDir: options.dataDir, networkPrefix: options.networkPrefix, slotCidr: options.slotCidr }];
  }
  return Array.from({ length: options.agents ?? 1 }, (_, i) => {
    const n = i + 1;
    return {
      app: `host-agent-${n}`,
      hostId: fleetHostId(options.name, n),
      address: `${fleet.net}.${n}.2`,
      dataDir: join(options.dataDir, 'fleet', `a${n}`),
      networkPrefix: `${options.networkPrefix}${n}`,
      slotCidr: `${FLEET_E2E_SLOT_NET}.${16 * n}.0/20`,
      fleetIndex: n,
    };
  });
}

/**
 * Starts the whole stack as it runs in production, from the built apps: a private
 * NATS server (so a dev stack on the same machine cannot answer our requests), a fresh
 * database, a private Redis with a password, and the five apps on free ports.
 */
export async function startStack(options: StackOptions = E2E_STACK): Promise<StackInfo> {
  const agentCount = options.agents ?? 1;
  const schedulerCount = options.schedulers ?? 1;
  if (!Number.isInteger(agentCount) || agentCount < 1 || agentCount > FLEET_MAX_AGENTS) throw new Error(`agents must be 1..${FLEET_MAX_AGENTS}`);
  if (!Number.isInteger(schedulerCount) || schedulerCount < 1) throw new Error('schedulers must be at least 1');
  const runDir = join(ROOT, '.kiln', options.name, 'run');
  rmSync(runDir, { recursive: true, force: true });
  mkdirSync(runDir, { recursive: true });
  const fleet = agentCount > 1 ? fleetOf(options.networkPrefix) : undefined;
  const planned = planAgents(options, fleet);
  for (const agent of planned) prepareDataDir(agent.dataDir);
  const pids: Record<string, number> = {};
  // What stopStack needs to clean up if the start fails half-way.
  const partial = { pids, agents: planned, fleet, dataDir: options.dataDir, networkPrefix: options.networkPrefix, slotCidr: options.slotCidr, stackFile: options.stackFile };
  if (fleet) {
    // Namespaces and links left by a killed run of this fleet first, then fresh ones.
    fleetCommand(fleet, ['remove']);
    fleetCommand(fleet, ['ensure', String(agentCount)]);
  }

  let natsUrl = options.dependencies?.natsUrl;
  // As in production, NATS admits only the apps' users, each limited to its own subjects (nats-permissions.ts).
  const natsUsers = options.dependencies?.natsUsers ?? generateKilnNatsUsers(planned.map((agent) => agent.hostId));
  if (!natsUrl) {
    // A fleet's agents reach NATS from their namespaces at the control address; a single agent on loopback.
    const natsHost = fleet?.controlAddress ?? '127.0.0.1';
    const natsPort = await freePort();
    const natsConfig = join(runDir, 'nats-server.conf');
    writeFileSync(natsConfig, renderNatsServerConfig({ host: natsHost, port: natsPort, storeDir: join(runDir, 'jetstream'), users: natsUsers }), { mode: 0o600 });
    const nats = startProcess('nats-server', ['-c', natsConfig], process.env, join(runDir, 'nats.log'));
    pids.nats = nats.pid!;
    natsUrl = `nats://${natsHost}:${natsPort}`;
    await waitForAddress(natsHost, natsPort, 'nats-server');
  }

  const db = options.dependencies ? { url: options.dependencies.databaseUrl, name: undefined } : await createTestDatabase();
  let redisUrl = options.dependencies?.redisUrl;
  if (!redisUrl) {
    // A private Redis that requires a password, as a deployment's must (production refuses a REDIS_URL without one).
    const redisPort = await freePort();
    const redisPassword = randomBytes(24).toString('hex');
    const redisConfig = join(runDir, 'redis.conf');
    writeFileSync(redisConfig, `bind 127.0.0.1\nport ${redisPort}\nrequirepass ${redisPassword}\nsave ""\nappendonly no\ndir ${runDir}\n`, { mode: 0o600 });
    const redis = startProcess('redis-server', [redisConfig], process.env, join(runDir, 'redis.log'));
    pids.redis = redis.pid!;
    redisUrl = `redis://:${redisPassword}@127.0.0.1:${redisPort}`;
    await waitForPort(redisPort, 'redis-server');
  }
  const ports = {
    gateway: await freePort(),
    sandboxProxy: await freePort(),
    schedulers: await Promise.all(Array.from({ length: schedulerCount }, () => freePort())),
    templateBuilder: await freePort(),
    hostMonitor: await freePort(),
  };
  const agents: StackAgent[] = [];
  const agentPorts: Array<{ http: number; grpc: number; proxy: number; egress: number }> = [];
  for (const agent of planned) {
    const own = { http: await freePort(), grpc: await freePort(), proxy: await freePort(), egress: await freePort() };
    agentPorts.push(own);
    agents.push({ ...agent, grpcAddress: `${agent.address}:${own.grpc}`, proxyUrl: `https://${agent.address}:${own.proxy}`, httpUrl: `http://${agent.address}:${own.http}` });
  }
  // The internal plane speaks mTLS as in production: the stack's own CA and the scheduler's, gateway's and host
  // agent's certificates (its run folder owns them). The host agents' certificate names every agent's address.
  const internalTlsDir = join(runDir, 'internal-tls');
  makeInternalTls(internalTlsDir, [], [...new Set(['127.0.0.1', 'localhost', ...agents.map((agent) => agent.address)])]);
  const joinTokenKey = randomBytes(32).toString('base64url');
  const common = {
    ...process.env,
    NODE_ENV: 'test',
    LOG_LEVEL: process.env.KILN_E2E_LOG_LEVEL ?? 'info',
    DATABASE_URL: db.url,
    NATS_URL: natsUrl,
    REDIS_URL: redisUrl,
    KILN_SANDBOX_TOKEN_KEY: `${options.name}-sandbox-token-key-${randomBytes(24).toString('hex')}`,
    // The host monitor's; agents join with tokens minted with it (KILN_JOIN_TOKEN below, startAgent).
    HOST_JOIN_TOKEN_KEY: joinTokenKey,
    KILN_ARTIFACT_DIR: join(options.dataDir, 'artifacts'),
    ...options.commonEnv,
  };
  // A fleet's agents share this machine: each is offered 1/N of it, so N agents do not promise N times its memory.
  const fleetShare: Record<string, string> = fleet
    ? {
        KILN_CAPACITY_VCPUS: String(Math.max(1, Math.floor((cpus().length * 8) / agents.length))),
        KILN_CAPACITY_MEMORY_MIB: String(Math.floor((totalmem() / 1024 / 1024) * 0.8 / agents.length)),
        KILN_CLONE_POOL_SIZE: '1',
      }
    : {};
  type AppPlan = { name: string; env: Record<string, string>; healthUrl: string; timeoutMs: number; agent?: StackAgent };
  const apps: AppPlan[] = [
    ...ports.schedulers.map((port, i) => ({
      name: i === 0 ? 'scheduler' : `scheduler-${i + 1}`,
      env: { HTTP_PORT: String(port), RECONCILE_INTERVAL_SECONDS: '5' },
      healthUrl: `http://127.0.0.1:${port}`,
      timeoutMs: 60_000,
    })),
    // Before the host agents: it answers their registrations.
    { name: 'host-monitor', env: { HTTP_PORT: String(ports.hostMonitor) }, healthUrl: `http://127.0.0.1:${ports.hostMonitor}`, timeoutMs: 60_000 },
    { name: 'template-builder', env: { HTTP_PORT: String(ports.templateBuilder) }, healthUrl: `http://127.0.0.1:${ports.templateBuilder}`, timeoutMs: 60_000 },
    ...agents.map((agent, i) => ({
      name: agent.app,
      agent,
      env: {
        HTTP_PORT: String(agentPorts[i].http),
        GRPC_PORT: String(agentPorts[i].grpc),
        PROXY_PORT: String(agentPorts[i].proxy),
        KILN_EGRESS_PROXY_PORT: String(agentPorts[i].egress),
        KILN_HOST_ID: agent.hostId,
        KILN_HOST_ADDRESS: agent.address,
        KILN_DATA_DIR: agent.dataDir,
        KILN_NETWORK_PREFIX: agent.networkPrefix,
        KILN_SLOT_CIDR: agent.slotCidr,
        KILN_HOST_STATE_KEY: randomBytes(32).toString('base64url'),
        KILN_NETWORK_PREFILL: '4',
        KILN_MAX_SANDBOXES: '16',
        ...(agent.fleetIndex
          ? ({
              // Uids and cgroups of their own (the e2e stack's single agent uses the default range from 200000).
              KILN_VMM_UID_BASE: String(200_000 + 65_536 * (16 + agent.fleetIndex)),
              KILN_VMM_UID_COUNT: '65536',
              KILN_VMM_CGROUP_PARENT: `kiln-${agent.networkPrefix}`,
              ...fleetShare,
            } as Record<string, string>)
          : {}),
        ...options.hostAgentEnv,
      },
      healthUrl: agent.httpUrl,
      timeoutMs: 120_000,
    })),
    {
      name: 'gateway',
      env: { HTTP_PORT: String(ports.gateway), SANDBOX_PROXY_PORT: String(ports.sandboxProxy), KILN_DOMAIN: 'localhost', RATE_LIMIT_PER_MINUTE: '100000' },
      healthUrl: `http://127.0.0.1:${ports.gateway}`,
      timeoutMs: 60_000,
    },
  ];
  const appEnvs: Record<string, Record<string, string>> = {};
  try {
    for (const app of apps) {
      const service = app.agent ? 'host-agent' : app.name.replace(/-\d+$/, '');
      const certificate = ['scheduler', 'gateway', 'host-agent', 'template-builder'].includes(service) ? internalTlsEnv(internalTlsDir, service) : {};
      const natsUser = app.agent ? hostAgentNatsUser(app.agent.hostId) : service;
      const env = { ...common, ...certificate, ...natsCredentialsEnv(natsUsers, natsUser), ...app.env } as Record<string, string>;
      appEnvs[app.name] = env;
      const child = app.agent
        ? await launchAgent(app.agent, env, joinTokenKey, runDir, fleet, app.timeoutMs)
        : await startApp(service, env, runDir, app.healthUrl, app.timeoutMs, app.name);
      pids[app.name] = child.pid!;
    }
    // Each host agent makes the template snapshot in the background at start; suites start once they exist.
    await Promise.all(agents.map((agent) => waitForSnapshot(agent.grpcAddress, internalTlsDir, 300_000)));
  } catch (error) {
    // A stack that did not come up leaves nothing running: what started is stopped and the host cleaned.
    await stopStack({ ...partial, appEnvs, databaseName: db.name } as unknown as StackInfo).catch(() => undefined);
    throw error;
  }

  const prisma = new PrismaService(db.url);
  try {
    const teams = new TeamRepository(prisma);
    const keys = new ApiKeyRepository(prisma);
    const team = await teams.ensure(options.name);
    const other = await teams.ensure(`${options.name}-other`);
    const templates = new TemplateRepository(prisma);
    const manifest = JSON.parse(readFileSync(join(SHARED_DATA_DIR, 'templates', 'base', 'current', 'template.json'), 'utf8'));
    await templates.ensurePublicTemplate({
      templateId: 'base',
      alias: 'base',
      vcpus: manifest.vcpus,
      memoryMib: manifest.memoryMib,
      diskMib: 2048,
      envdVersion: ENVD_COMPAT_VERSION,
      contentHash: manifest.buildId,
    });
    const info: StackInfo = {
      apiUrl: `http://127.0.0.1:${ports.gateway}`,
      sandboxUrl: `http://127.0.0.1:${ports.sandboxProxy}`,
      apiKey: (await keys.create(team.id, options.name)).key,
      otherTeamApiKey: (await keys.create(other.id, `${options.name}-other`)).key,
      teamId: team.id,
      databaseUrl: db.url,
      databaseName: db.name,
      natsUrl,
      natsUsers,
      redisUrl,
      hostAgent: { grpcAddress: agents[0].grpcAddress, proxyUrl: agents[0].proxyUrl, httpUrl: agents[0].httpUrl, hostId: agents[0].hostId },
      agents,
      fleet,
      schedulerHttpUrls: ports.schedulers.map((port) => `http://127.0.0.1:${port}`),
      joinTokenKey,
      domain: 'localhost',
      dataDir: options.dataDir,
      networkPrefix: options.networkPrefix,
      slotCidr: options.slotCidr,
      stackFile: options.stackFile,
      pids,
      runDir,
      hostAgentEnv: appEnvs[agents[0].app],
      appEnvs,
      httpPorts: Object.fromEntries(apps.map((app) => [app.name, Number(app.env.HTTP_PORT)])),
      internalTlsDir,
    };
    mkdirSync(dirname(options.stackFile), { recursive: true });
    writeFileSync(options.stackFile, JSON.stringify(info, null, 2));
    return info;
  } finally {
    await prisma.$disconnect();
  }
}


async function waitForSnapshot(grpcAddress: string, internalTlsDir: string, timeoutMs: number): Promise<void> {
  const agent = hostAgentClient(grpcAddress, internalTlsFiles(internalTlsDir, 'scheduler'));
  try {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const info = await agent.hostInfo().catch(() => undefined);
      if (info?.templates.some((t) => t.templateId === 'base' && t.snapshotReady)) return;
      await new Promise((r) => setTimeout(r, 500));
    }
    throw new Error(`the host agent made no snapshot of base within ${timeoutMs} ms`);
  } finally {
    agent.close();
  }
}

/** Starts `service`'s built main.js (logged as `logName`, e.g. scheduler-2) and waits for its health. */
async function startApp(service: string, env: Record<string, string>, runDir: string, healthUrl: string, timeoutMs: number, logName = service): Promise<ChildProcess> {
  const logPath = join(runDir, `${logName}.log`);
  const child = startProcess('node', [join(ROOT, 'apps', service, 'dist', 'main.js')], env, logPath);
  await waitHealthy(logName, healthUrl, child, logPath, timeoutMs);
  return child;
}

/**
 * Starts a host agent with a freshly minted one-time join token (used only while it has no stored credential), in
 * its network namespace when it is a fleet's (fleet.sh exec: every step execs, so the pid is the agent's node).
 */
async function launchAgent(agent: StackAgent, env: Record<string, string>, joinTokenKey: string, runDir: string, fleet: StackFleet | undefined, timeoutMs: number): Promise<ChildProcess> {
  const logPath = join(runDir, `${agent.app}.log`);
  const main = join(ROOT, 'apps', 'host-agent', 'dist', 'main.js');
  const withToken = { ...env, KILN_JOIN_TOKEN: mintJoinToken(joinTokenKey, agent.hostId, 3600).token };
  const child =
    fleet && agent.fleetIndex
      ? startProcess('bash', [FLEET_SCRIPT, 'exec', String(agent.fleetIndex), '--', 'node', main], { ...withToken, ...fleetEnv(fleet) }, logPath)
      : startProcess('node', [main], withToken, logPath);
  await waitHealthy(agent.app, agent.httpUrl, child, logPath, timeoutMs);
  return child;
}

/** SIGKILLs one of the stack's apps (a host agent's VMs keep running). */
export async function killApp(info: StackInfo, name: string): Promise<void> {
  const pid = info.pids[name];
  if (pid && alive(pid)) {
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 50 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts a killed app again with the environment it had; returns the stack with its new pid. */
export async function restartApp(info: StackInfo, name: string): Promise<StackInfo> {
  const agent = info.agents?.find((candidate) => candidate.app === name);
  if (agent) return startAgent(info, info.agents.indexOf(agent));
  const env = info.appEnvs[name];
  const child = await startApp(name.replace(/-\d+$/, ''), env, info.runDir, `http://127.0.0.1:${env.HTTP_PORT}`, 120_000, name);
  return withPid(info, name, child.pid!);
}

function withPid(info: StackInfo, name: string, pid: number): StackInfo {
  const updated = { ...info, pids: { ...info.pids, [name]: pid } };
  writeFileSync(info.stackFile, JSON.stringify(updated, null, 2));
  return updated;
}

/** SIGKILLs the host agent (its VMs keep running) and starts it again with the same environment. */
export async function restartHostAgentAfterKill(info: StackInfo): Promise<StackInfo> {
  await killApp(info, info.agents[0].app);
  return restartApp(info, info.agents[0].app);
}

/** SIGKILLs host agent `index` (0-based): its node process only; its VMs, slots and namespace stay. */
export async function killAgent(info: StackInfo, index: number): Promise<void> {
  await killApp(info, agentAt(info, index).app);
}

/**
 * Starts host agent `index` (0-based) again, killed or not running, with the environment it had and a fresh join
 * token; waits for its health. Returns the stack with its new pid (the stack file is rewritten).
 */
export async function startAgent(info: StackInfo, index: number): Promise<StackInfo> {
  const agent = agentAt(info, index);
  const pid = info.pids[agent.app];
  if (pid && alive(pid)) throw new Error(`host agent ${agent.hostId} is still running (pid ${pid}): killAgent it first`);
  const child = await launchAgent(agent, info.appEnvs[agent.app], info.joinTokenKey, info.runDir, info.fleet, 120_000);
  return withPid(info, agent.app, child.pid!);
}

/**
 * Cuts host agent `index` (0-based) off the network: its uplink down on the host side (`ip link set <link>h down`).
 * It keeps running, and so do its VMs; nothing reaches it and it reaches nothing (NATS included). Fleets only.
 */
export async function partitionAgent(info: StackInfo, index: number): Promise<void> {
  fleetCommand(fleetOfStack(info), ['partition', String(fleetIndexOf(info, index))]);
}

/** Brings a partitioned agent's uplink back up (routes on both sides come back with it). */
export async function healAgent(info: StackInfo, index: number): Promise<void> {
  fleetCommand(fleetOfStack(info), ['heal', String(fleetIndexOf(info, index))]);
}

function fleetOfStack(info: StackInfo): StackFleet {
  if (!info.fleet) throw new Error('partitionAgent/healAgent need a fleet (startStack with agents > 1): a single agent shares the host network');
  return info.fleet;
}

function fleetIndexOf(info: StackInfo, index: number): number {
  const n = agentAt(info, index).fleetIndex;
  if (!n) throw new Error(`host agent ${index} is not in a namespace of its own`);
  return n;
}

export function readStack(stackFile = STACK_FILE): StackInfo {
  return JSON.parse(readFileSync(stackFile, 'utf8')) as StackInfo;
}

/** Whether a process with this pid exists (signal 0). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The stack's agents; a stack file from before fleets had the one agent only. */
function agentsOf(info: Pick<StackInfo, 'agents' | 'dataDir' | 'networkPrefix' | 'slotCidr'>): Array<Pick<StackAgent, 'app' | 'dataDir' | 'networkPrefix' | 'slotCidr' | 'fleetIndex'>> {
  return info.agents ?? [{ app: 'host-agent', dataDir: info.dataDir, networkPrefix: info.networkPrefix, slotCidr: info.slotCidr }];
}

/**
 * Stops the apps (host agents last), then removes every VM, slot and layer the suite's host agents made, and a
 * fleet's namespaces and links.
 */
export async function stopStack(info: StackInfo): Promise<void> {
  const agents = agentsOf(info);
  const schedulers = Object.keys(info.pids).filter((name) => /^scheduler(-\d+)?$/.test(name));
  for (const name of ['gateway', 'template-builder', 'host-monitor', ...schedulers, ...agents.map((agent) => agent.app), 'nats', 'redis']) {
    const pid = info.pids[name];
    if (!pid || !alive(pid)) continue;
    process.kill(pid, 'SIGTERM');
    for (let i = 0; i < 50 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
    if (alive(pid)) process.kill(pid, 'SIGKILL');
  }
  for (const agent of agents) {
    // In the agent's namespace while it exists: its slot veths and firewall table are there (slot namespaces are
    // the host's). The agent's own settings (cgroup parent, uids) say what to remove; no secrets are needed.
    const inFleet = info.fleet && agent.fleetIndex && existsSync(`/run/netns/${info.fleet.netnsPrefix}${agent.fleetIndex}`);
    const teardownJs = join(ROOT, 'apps', 'host-agent', 'dist', 'teardown.js');
    const env = {
      ...process.env,
      ...(info.appEnvs?.[agent.app] ?? {}),
      ...(info.fleet ? fleetEnv(info.fleet) : {}),
      KILN_DATA_DIR: agent.dataDir,
      KILN_NETWORK_PREFIX: agent.networkPrefix,
      KILN_SLOT_CIDR: agent.slotCidr,
      LOG_LEVEL: 'warn',
    };
    const [command, args] = inFleet ? ['bash', [FLEET_SCRIPT, 'exec', String(agent.fleetIndex), '--', 'node', teardownJs]] : ['node', [teardownJs]];
    await new Promise<void>((resolve) => {
      const teardown = spawn(command as string, args as string[], { env, stdio: 'inherit' });
      teardown.on('exit', () => resolve());
      teardown.on('error', () => resolve());
    });
  }
  if (info.fleet) fleetCommand(info.fleet, ['remove']);
  if (info.databaseName) {
    const { Client } = await import('pg');
    const admin = new Client({ connectionString: 'postgresql://postgres@127.0.0.1:5432/postgres' });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS "${info.databaseName}" WITH (FORCE)`);
    await admin.end();
  }
  rmSync(info.stackFile, { force: true });
  const leftovers = [...agents.flatMap((agent) => hostLeftovers(agent)), ...(info.fleet ? fleetLeftovers(info.fleet) : [])];
  if (leftovers.length) throw new Error(`the e2e stack left resources behind: ${leftovers.join('; ')}`);
}

/** A command's output, or '' when it fails (a probe of what is left on the machine). */
function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8' });
  } catch {
    return '';
  }
}

/** A fleet's namespaces, links, control address and nft table that are still there. */
export function fleetLeftovers(fleet: StackFleet): string[] {
  const found: string[] = [];
  const netns = run('ip', ['netns', 'list']).split('\n').map((l) => l.split(' ')[0]).filter((name) => new RegExp(`^${fleet.netnsPrefix}\\d+$`).test(name));
  if (netns.length) found.push(`fleet netns ${netns.join(',')}`);
  const links = run('ip', ['-o', 'link', 'show']).split('\n').filter((l) => new RegExp(`: ${fleet.linkPrefix}\\d+h[@:]`).test(l));
  if (links.length) found.push(`${links.length} fleet uplinks`);
  if (run('ip', ['-o', '-4', 'addr', 'show', 'dev', 'lo']).includes(` ${fleet.controlAddress}/32 `)) found.push(`control address ${fleet.controlAddress}`);
  if (run('nft', ['list', 'tables']).split('\n').some((l) => l.trim() === `table ip ${fleet.linkPrefix}fleet`)) found.push(`nft table ip ${fleet.linkPrefix}fleet`);
  return found;
}

/** Everything the suite's host agent could have left on this machine, named. */
export function hostLeftovers(info: Pick<StackInfo, 'networkPrefix' | 'dataDir'>): string[] {
  const found: string[] = [];
  const netns = run('ip', ['netns', 'list']).split('\n').filter((l) => l.startsWith(`${info.networkPrefix}-`));
  if (netns.length) found.push(`netns ${netns.map((l) => l.split(' ')[0]).join(',')}`);
  const links = run('ip', ['-o', 'link', 'show']).split('\n').filter((l) => l.includes(` ${info.networkPrefix}-v`));
  if (links.length) found.push(`${links.length} veth`);
  if (run('nft', ['list', 'tables']).split('\n').some((l) => l.trim() === `table inet ${info.networkPrefix}`)) found.push(`nft table inet ${info.networkPrefix}`);
  const qemu = run('pgrep', ['-f', `qemu-system.*${info.dataDir}/`]).trim();
  if (qemu) found.push(`qemu pids ${qemu.split('\n').join(',')}`);
  const sandboxesDir = join(info.dataDir, 'sandboxes');
  if (existsSync(sandboxesDir) && readdirSync(sandboxesDir).length) found.push(`sandbox dirs in ${sandboxesDir}`);
  return found;
}
