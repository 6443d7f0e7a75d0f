import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import 'reflect-metadata';
import { ApiKeyRepository, PrismaService, TeamRepository, TemplateRepository } from '@kiln/db';
import { createTestDatabase } from '@kiln/db/testing';
import { ENVD_COMPAT_VERSION } from '@kiln/contracts';
import { NatsUser, generateKilnNatsUsers, hostAgentNatsUser, natsCredentialsEnv, renderNatsServerConfig } from '@kiln/messaging';
import { freePort, waitForPort } from '@kiln/testing';
import { hostAgentClient } from './host-agent-client';
import { internalTlsEnv, internalTlsFiles, makeInternalTls } from './internal-tls';
import { OPENED_PRIVATE_RANGE } from './test-internet';

export const ROOT = join(__dirname, '..', '..', '..');
export const STACK_FILE = join(ROOT, '.kiln', 'e2e', 'stack.json');
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
  /** Extra host-agent settings. */
  hostAgentEnv?: Record<string, string>;
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
  hostAgent: { grpcAddress: string; proxyUrl: string; httpUrl: string; hostId: string };
  domain: string;
  dataDir: string;
  networkPrefix: string;
  slotCidr: string;
  stackFile: string;
  pids: Record<string, number>;
  runDir: string;
  /** HTTP ports of every app (health and metrics). */
  httpPorts: Record<string, number>;
  /** Full environment the host agent was started with, so a test can restart it. */
  hostAgentEnv: Record<string, string>;
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

/**
 * Starts the whole stack as it runs in production, from the built apps: a private
 * NATS server (so a dev stack on the same machine cannot answer our requests), a fresh
 * database, a private Redis with a password, and the five apps on free ports.
 */
export async function startStack(options: StackOptions = E2E_STACK): Promise<StackInfo> {
  const runDir = join(ROOT, '.kiln', options.name, 'run');
  rmSync(runDir, { recursive: true, force: true });
  mkdirSync(runDir, { recursive: true });
  prepareDataDir(options.dataDir);
  const pids: Record<string, number> = {};

  const hostId = stackHostId(options.name);
  let natsUrl = options.dependencies?.natsUrl;
  // As in production, NATS admits only the apps' users, each limited to its own subjects (nats-permissions.ts).
  const natsUsers = options.dependencies?.natsUsers ?? generateKilnNatsUsers([hostId]);
  if (!natsUrl) {
    const natsPort = await freePort();
    const natsConfig = join(runDir, 'nats-server.conf');
    writeFileSync(natsConfig, renderNatsServerConfig({ port: natsPort, storeDir: join(runDir, 'jetstream'), users: natsUsers }), { mode: 0o600 });
    const nats = startProcess('nats-server', ['-c', natsConfig], process.env, join(runDir, 'nats.log'));
    pids.nats = nats.pid!;
    natsUrl = `nats://127.0.0.1:${natsPort}`;
    await waitForPort(natsPort, 'nats-server');
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
  const token = `${options.name}-registration-${Date.now()}-token`;
  const ports = {
    gateway: await freePort(),
    sandboxProxy: await freePort(),
    scheduler: await freePort(),
    templateBuilder: await freePort(),
    hostMonitor: await freePort(),
    hostAgent: await freePort(),
    grpc: await freePort(),
    agentProxy: await freePort(),
    egressProxy: await freePort(),
  };
  // The internal plane speaks mTLS as in production: the stack's own CA and the scheduler's, gateway's and host
  // agent's certificates (its run folder owns them).
  const internalTlsDir = join(runDir, 'internal-tls');
  makeInternalTls(internalTlsDir);
  const common = {
    ...process.env,
    NODE_ENV: 'test',
    LOG_LEVEL: process.env.KILN_E2E_LOG_LEVEL ?? 'info',
    DATABASE_URL: db.url,
    NATS_URL: natsUrl,
    REDIS_URL: redisUrl,
    HOST_REGISTRATION_TOKEN: token,
    KILN_SANDBOX_TOKEN_KEY: `${options.name}-sandbox-token-key-${randomBytes(24).toString('hex')}`,
    HOST_HEARTBEAT_TTL_SECONDS: '15',
    KILN_ARTIFACT_DIR: join(options.dataDir, 'artifacts'),
    ...options.commonEnv,
  };
  const apps: Array<{ name: string; env: Record<string, string>; port: number; timeoutMs: number }> = [
    { name: 'scheduler', env: { HTTP_PORT: String(ports.scheduler), RECONCILE_INTERVAL_SECONDS: '5' }, port: ports.scheduler, timeoutMs: 60_000 },
    { name: 'host-monitor', env: { HTTP_PORT: String(ports.hostMonitor) }, port: ports.hostMonitor, timeoutMs: 60_000 },
    { name: 'template-builder', env: { HTTP_PORT: String(ports.templateBuilder) }, port: ports.templateBuilder, timeoutMs: 60_000 },
    {
      name: 'host-agent',
      env: {
        HTTP_PORT: String(ports.hostAgent),
        GRPC_PORT: String(ports.grpc),
        PROXY_PORT: String(ports.agentProxy),
        KILN_EGRESS_PROXY_PORT: String(ports.egressProxy),
        KILN_HOST_ID: hostId,
        KILN_HOST_ADDRESS: '127.0.0.1',
        KILN_DATA_DIR: options.dataDir,
        KILN_NETWORK_PREFIX: options.networkPrefix,
        KILN_SLOT_CIDR: options.slotCidr,
        KILN_NETWORK_PREFILL: '4',
        KILN_MAX_SANDBOXES: '16',
        HEARTBEAT_INTERVAL_SECONDS: '2',
        ...options.hostAgentEnv,
      },
      port: ports.hostAgent,
      timeoutMs: 120_000,
    },
    {
      name: 'gateway',
      env: { HTTP_PORT: String(ports.gateway), SANDBOX_PROXY_PORT: String(ports.sandboxProxy), KILN_DOMAIN: 'localhost', RATE_LIMIT_PER_MINUTE: '100000' },
      port: ports.gateway,
      timeoutMs: 60_000,
    },
  ];
  const appEnvs: Record<string, Record<string, string>> = {};
  try {
    for (const app of apps) {
      const certificate = ['scheduler', 'gateway', 'host-agent', 'template-builder'].includes(app.name) ? internalTlsEnv(internalTlsDir, app.name) : {};
      const natsUser = app.name === 'host-agent' ? hostAgentNatsUser(hostId) : app.name;
      const env = { ...common, ...certificate, ...natsCredentialsEnv(natsUsers, natsUser), ...app.env } as Record<string, string>;
      appEnvs[app.name] = env;
      pids[app.name] = (await startApp(app.name, env, runDir, app.port, app.timeoutMs)).pid!;
    }
    // The host agent makes the template snapshot in the background at start; suites start once it exists.
    await waitForSnapshot(`127.0.0.1:${ports.grpc}`, internalTlsDir, 300_000);
  } catch (error) {
    // A stack that did not come up leaves nothing running: what started is stopped and the host cleaned.
    const partial = { pids, dataDir: options.dataDir, networkPrefix: options.networkPrefix, slotCidr: options.slotCidr, databaseName: db.name, stackFile: options.stackFile };
    await stopStack(partial as StackInfo).catch(() => undefined);
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
      hostAgent: {
        grpcAddress: `127.0.0.1:${ports.grpc}`,
        proxyUrl: `https://127.0.0.1:${ports.agentProxy}`,
        httpUrl: `http://127.0.0.1:${ports.hostAgent}`,
        hostId,
      },
      domain: 'localhost',
      dataDir: options.dataDir,
      networkPrefix: options.networkPrefix,
      slotCidr: options.slotCidr,
      stackFile: options.stackFile,
      pids,
      runDir,
      hostAgentEnv: appEnvs['host-agent'],
      appEnvs,
      httpPorts: Object.fromEntries(apps.map((app) => [app.name, app.port])),
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

async function startApp(name: string, env: Record<string, string>, runDir: string, port: number, timeoutMs: number): Promise<ChildProcess> {
  const logPath = join(runDir, `${name}.log`);
  const child = startProcess('node', [join(ROOT, 'apps', name, 'dist', 'main.js')], env, logPath);
  await waitHealthy(name, `http://127.0.0.1:${port}`, child, logPath, timeoutMs);
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
  const env = info.appEnvs[name];
  const child = await startApp(name, env, info.runDir, Number(env.HTTP_PORT), 120_000);
  const updated = { ...info, pids: { ...info.pids, [name]: child.pid! } };
  writeFileSync(info.stackFile, JSON.stringify(updated, null, 2));
  return updated;
}

/** SIGKILLs the host agent (its VMs keep running) and starts it again with the same environment. */
export async function restartHostAgentAfterKill(info: StackInfo): Promise<StackInfo> {
  await killApp(info, 'host-agent');
  return restartApp(info, 'host-agent');
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

/** Stops the apps (host agent last), then removes every VM, slot and layer the suite's host agent made. */
export async function stopStack(info: StackInfo): Promise<void> {
  for (const name of ['gateway', 'template-builder', 'host-monitor', 'scheduler', 'host-agent', 'nats', 'redis']) {
    const pid = info.pids[name];
    if (!pid || !alive(pid)) continue;
    process.kill(pid, 'SIGTERM');
    for (let i = 0; i < 50 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
    if (alive(pid)) process.kill(pid, 'SIGKILL');
  }
  await new Promise<void>((resolve) => {
    const teardown = spawn('node', [join(ROOT, 'apps', 'host-agent', 'dist', 'teardown.js')], {
      env: { ...process.env, KILN_DATA_DIR: info.dataDir, KILN_NETWORK_PREFIX: info.networkPrefix, KILN_SLOT_CIDR: info.slotCidr, LOG_LEVEL: 'warn' },
      stdio: 'inherit',
    });
    teardown.on('exit', () => resolve());
  });
  if (info.databaseName) {
    const { Client } = await import('pg');
    const admin = new Client({ connectionString: 'postgresql://postgres@127.0.0.1:5432/postgres' });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS "${info.databaseName}" WITH (FORCE)`);
    await admin.end();
  }
  rmSync(info.stackFile, { force: true });
  const leftovers = hostLeftovers(info);
  if (leftovers.length) throw new Error(`the e2e stack left resources behind: ${leftovers.join('; ')}`);
}

/** Everything the suite's host agent could have left on this machine, named. */
export function hostLeftovers(info: Pick<StackInfo, 'networkPrefix' | 'dataDir'>): string[] {
  const run = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8' });
    } catch {
      return '';
    }
  };
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
