import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Client as PgClient } from 'pg';
import { Sandbox } from 'e2b';
import { generateKilnNatsUsers, renderNatsServerConfig } from '@kiln/messaging';
import { eventually, RestartableServer, startRestartableNats, startRestartablePostgres, startRestartableRedis } from '@kiln/testing';
import { hostAgentClient } from '../../e2e/harness/host-agent-client';
import { internalTlsFiles } from '../../e2e/harness/internal-tls';
import { ROOT, StackInfo, StackOptions, killApp, readStack, restartApp, stackHostId, startStack, stopStack } from '../../e2e/harness/stack-harness';

/** The fault stack: its own data dir, slot prefix and CIDR, beside the e2e suite's and a developer's. */
const FAULT_STACK: Omit<StackOptions, 'dependencies'> = {
  name: 'faults',
  dataDir: '/var/lib/kiln-faults',
  networkPrefix: 'kflt',
  slotCidr: '10.202.0.0/20',
  stackFile: join(ROOT, '.kiln', 'faults', 'stack.json'),
  // A shorter create deadline chain than production's, so a create orphaned by a kill is reconciled within a minute.
  commonEnv: {
    SANDBOX_GUEST_INIT_DEADLINE_MS: '40000',
    SANDBOX_HOST_CREATE_DEADLINE_MS: '45000',
    SANDBOX_CREATE_TIMEOUT_MS: '50000',
    SANDBOX_RECONCILE_GRACE_MS: '10000',
  },
};

/** The host agent's defaults the stack runs with: clones kept per template, slots kept free and kept idle. */
const POOL_SIZE = 2;
const SLOT_PREFILL = 4;
const SLOT_MAX_IDLE = 32;

/** Rows in these states are on their way somewhere; after recovery and reconcile none may be left. */
const TRANSITIONAL = ['pending', 'starting', 'pausing', 'resuming'];

interface ResourceCounts {
  netns: number;
  veths: number;
  qemu: number;
  qcow2Layers: number;
  cloneDirs: number;
  sandboxDirs: number;
  nftTables: number;
}

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8' });
  } catch {
    return '';
  }
}

function filesUnder(dir: string, suffix: string): number {
  if (!existsSync(dir)) return 0;
  let count = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) if (entry.isFile() && entry.name.endsWith(suffix)) count++;
  return count;
}

/** What the fault stack's host holds: at rest, exactly its pools (free slots, paused clones) and nothing else. */
function resourceCounts(stack: StackInfo): ResourceCounts {
  const netns = run('ip', ['netns', 'list']).split('\n').filter((l) => l.startsWith(`${stack.networkPrefix}-`));
  const dir = (name: string) => join(stack.dataDir, name);
  const entries = (name: string) => (existsSync(dir(name)) ? readdirSync(dir(name)).length : 0);
  return {
    netns: netns.length,
    veths: run('ip', ['-o', 'link', 'show']).split('\n').filter((l) => l.includes(` ${stack.networkPrefix}-v`)).length,
    qemu: run('pgrep', ['-f', `qemu-system.*${stack.dataDir}/`]).split('\n').filter(Boolean).length,
    qcow2Layers: filesUnder(dir('sandboxes'), '.qcow2') + filesUnder(dir('clones'), '.qcow2'),
    cloneDirs: entries('clones'),
    sandboxDirs: entries('sandboxes'),
    // The host's own table, and one per slot namespace.
    nftTables:
      run('nft', ['list', 'tables']).split('\n').filter((l) => l.trim() === `table inet ${stack.networkPrefix}`).length +
      netns.filter((l) => run('ip', ['netns', 'exec', l.split(' ')[0], 'nft', 'list', 'tables']).includes('table inet kiln')).length,
  };
}

/** What the host agent says it holds: its clone pool, its slots by state, its sandboxes. */
interface AgentAccount {
  pooledClones: number;
  sandboxes: number;
  slotsLeased: number;
  slotsFree: number;
  slotsPreparing: number;
}

async function agentAccount(stack: StackInfo): Promise<AgentAccount | undefined> {
  const text = await (await fetch(`${stack.hostAgent.httpUrl}/metrics`, { signal: AbortSignal.timeout(5_000) }).catch(() => undefined))?.text();
  if (!text) return undefined;
  const value = (name: string, labels = '') => Number(new RegExp(`^${name}\\{[^}]*${labels}[^}]*\\} ([0-9.]+)$`, 'm').exec(text)?.[1] ?? NaN);
  return {
    pooledClones: value('kiln_agent_clone_pool_ready'),
    sandboxes: value('kiln_agent_sandboxes'),
    slotsLeased: value('kiln_agent_network_slots', 'state="leased"'),
    slotsFree: value('kiln_agent_network_slots', 'state="free"'),
    slotsPreparing: value('kiln_agent_network_slots', 'state="preparing"'),
  };
}

/**
 * The host at rest: the clone pool full again (the agent refills it after every take and replaces a clone that
 * died), nothing being prepared, and the counts unchanged for a few seconds.
 */
async function settled(stack: StackInfo, poolSize: number): Promise<{ counts: ResourceCounts; account: AgentAccount }> {
  let previous = '';
  return eventually(
    'the host to come to rest (pool full, nothing being prepared)',
    async () => {
      await new Promise((r) => setTimeout(r, 2_000));
      const account = await agentAccount(stack);
      const counts = resourceCounts(stack);
      const now = JSON.stringify({ account, counts });
      const atRest = account !== undefined && account.pooledClones === poolSize && account.slotsPreparing === 0 && now === previous;
      previous = now;
      return atRest ? { counts, account: account! } : undefined;
    },
    { timeoutMs: 120_000 },
  );
}

/**
 * Whatever the host holds that nothing owns. Every qemu, clone dir and qcow2 layer belongs to a pooled clone or a
 * sandbox; every slot namespace (with its veth and nft table) is one the pool leased or keeps free; every sandbox
 * dir is a live sandbox's.
 */
function unowned(counts: ResourceCounts, account: AgentAccount): Record<string, number> {
  const owners = account.pooledClones + account.sandboxes;
  const slots = account.slotsLeased + account.slotsFree;
  const excess: Record<string, number> = {
    qemu: counts.qemu - owners,
    cloneDirs: counts.cloneDirs - owners,
    qcow2Layers: counts.qcow2Layers - owners,
    sandboxDirs: counts.sandboxDirs - account.sandboxes,
    netns: counts.netns - slots,
    veths: counts.veths - slots,
    nftTables: counts.nftTables - (slots + 1),
  };
  return Object.fromEntries(Object.entries(excess).filter(([, n]) => n !== 0));
}

/**
 * The fault battery (issue 10): each part of the platform (host agent, one VM, scheduler, gateway, NATS, Redis,
 * Postgres) is killed with SIGKILL in the middle of a create and in the middle of a kill, then brought back. After
 * recovery and reconcile: no sandbox record lost, none stuck in a transitional state, every sandbox that runs is
 * usable, and the host holds exactly what it held before (no leaked netns, veth, qemu, qcow2 layer, clone dir,
 * sandbox dir or nft table). Its counts are printed per fault.
 */
describe('faults-e2e: kill -9 anything mid-create and mid-kill; nothing lost, stuck or leaked', () => {
  let stack: StackInfo;
  let postgres: RestartableServer;
  let redis: RestartableServer;
  let nats: RestartableServer;
  let db: PgClient | undefined;
  const summary: string[] = [];

  const api = (path: string, init: RequestInit = {}) =>
    fetch(`${stack.apiUrl}${path}`, {
      ...init,
      headers: { 'X-API-Key': stack.apiKey, ...(init.body ? { 'content-type': 'application/json' } : {}), ...(init.headers as Record<string, string>) },
      signal: AbortSignal.timeout(60_000),
    });

  const createSandbox = async (): Promise<string | undefined> => {
    const response = await api('/sandboxes', { method: 'POST', body: JSON.stringify({ templateID: 'base', timeout: 600 }) }).catch(() => undefined);
    if (response?.status !== 201) return undefined;
    return ((await response.json()) as { sandboxID: string }).sandboxID;
  };

  /** A query on the fault stack's own Postgres, reconnecting after a Postgres kill. */
  const query = async <T>(sql: string, params: unknown[] = []): Promise<T[]> => {
    for (let attempt = 0; ; attempt++) {
      try {
        if (!db) {
          db = new PgClient({ connectionString: stack.databaseUrl, connectionTimeoutMillis: 2_000 });
          db.on('error', () => undefined);
          await db.connect();
        }
        return (await db.query(sql, params)).rows as T[];
      } catch (error) {
        await db?.end().catch(() => undefined);
        db = undefined;
        if (attempt >= 30) throw error;
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  };

  interface Fault {
    name: string;
    kill(): Promise<void>;
    recover(): Promise<void>;
  }

  const appFault = (name: string): Fault => ({
    name,
    kill: () => killApp(stack, name),
    recover: async () => {
      stack = await restartApp(stack, name);
    },
  });
  const serverFault = (name: string, server: () => RestartableServer): Fault => ({
    name,
    kill: () => server().kill9(),
    recover: () => server().start(),
  });
  const vmFault: Fault = {
    name: 'one VM',
    // The newest qemu under the stack's data dir: mid-create that is the clone the create restores or resumes.
    kill: async () => {
      const pid = run('pgrep', ['-n', '-f', `qemu-system.*${stack.dataDir}/`]).trim();
      if (pid) process.kill(Number(pid), 'SIGKILL');
    },
    recover: async () => undefined,
  };

  const faults = (): Fault[] => [
    appFault('host-agent'),
    vmFault,
    appFault('scheduler'),
    appFault('gateway'),
    serverFault('NATS', () => nats),
    serverFault('Redis', () => redis),
    serverFault('Postgres', () => postgres),
  ];

  beforeAll(async () => {
    // A previous run that was killed leaves its stack behind; remove it first (its dependencies died with it).
    if (existsSync(FAULT_STACK.stackFile)) await stopStack(readStack(FAULT_STACK.stackFile)).catch(() => undefined);
    // NATS as in production: the stack's users only (the same config across its restarts).
    const natsUsers = generateKilnNatsUsers([stackHostId(FAULT_STACK.name)]);
    [postgres, redis, nats] = await Promise.all([
      startRestartablePostgres(),
      startRestartableRedis(),
      startRestartableNats({ config: ({ port, storeDir }) => renderNatsServerConfig({ port, storeDir, users: natsUsers }) }),
    ]);
    stack = await startStack({ ...FAULT_STACK, dependencies: { databaseUrl: postgres.url, redisUrl: redis.url, natsUrl: nats.url, natsUsers } });
  });

  afterAll(async () => {
    console.log(`fault battery:\n${summary.join('\n')}`);
    await db?.end().catch(() => undefined);
    // stopStack fails the suite if the stack left any netns, veth, nft table, qemu or sandbox dir behind.
    if (stack) await stopStack(stack);
    await Promise.all([postgres?.dispose(), redis?.dispose(), nats?.dispose()]);
  });

  /** After a fault: the API answers, no row is transitional, every running sandbox answers a command. */
  async function recoveredState(createdIds: string[]): Promise<{ lost: string[]; stuck: number; running: string[] }> {
    await eventually('the API to answer again', async () => (await api('/v2/sandboxes').catch(() => undefined))?.status === 200, { timeoutMs: 120_000 });
    const transitional = async () => Number((await query<{ n: string }>('select count(*)::text as n from sandboxes where state::text = any($1)', [TRANSITIONAL]))[0].n);
    // Given the deadline chain plus reconcile's interval to settle; whatever is still transitional then is stuck.
    await eventually('reconcile to settle every transitional row', async () => (await transitional()) === 0, { timeoutMs: 240_000 }).catch(() => undefined);
    const stuck = await transitional();
    const rows = await query<{ id: string; state: string }>('select id, state::text as state from sandboxes where id = any($1)', [createdIds]);
    const lost = createdIds.filter((id) => !rows.some((r) => r.id === id));
    const running = (await query<{ id: string }>("select id from sandboxes where state = 'running'")).map((r) => r.id);
    const opts = { apiKey: stack.apiKey, apiUrl: stack.apiUrl, sandboxUrl: stack.sandboxUrl, domain: stack.domain };
    for (const id of running) {
      const sandbox = await Sandbox.connect(id, opts);
      expect((await sandbox.commands.run('echo alive')).stdout).toBe('alive\n');
    }
    return { lost, stuck, running };
  }

  /** Kills every sandbox the test left (through the API) and waits until the host has none. */
  async function cleanUp(): Promise<void> {
    const live = await query<{ id: string }>("select id from sandboxes where state::text <> all('{killed,error}')");
    for (const { id } of live) {
      const status = (await api(`/sandboxes/${id}`, { method: 'DELETE' })).status;
      // 404: it ended on its own meanwhile (its VM was the one killed, say).
      expect({ id, ended: status === 204 || status === 404 }).toEqual({ id, ended: true });
    }
    const agent = hostAgentClient(stack.hostAgent.grpcAddress, internalTlsFiles(stack.internalTlsDir, 'scheduler'));
    try {
      await eventually('the host to hold no sandbox', async () => (await agent.listSandboxes().catch(() => undefined))?.sandboxes.length === 0, { timeoutMs: 120_000 });
    } finally {
      agent.close();
    }
  }

  // The faults reach the stack and the servers only when they act, so the list can be built before beforeAll ran.
  for (const phase of ['create', 'kill'] as const) {
    describe(`mid-${phase}`, () => {
      for (const fault of faults()) {
        it(`${fault.name} killed with SIGKILL mid-${phase}: no record lost, none stuck, nothing leaked`, async () => {
          const before = await settled(stack, POOL_SIZE);
          expect(unowned(before.counts, before.account)).toEqual({});
          const createdIds: string[] = [];
          if (phase === 'create') {
            const creates = [createSandbox(), createSandbox()];
            // Rows exist and the host is restoring or resuming clones.
            await new Promise((r) => setTimeout(r, 250));
            await fault.kill();
            // Brought back at once, as a supervisor would; the clients' creates end however they end.
            await fault.recover();
            for (const id of await Promise.all(creates)) if (id) createdIds.push(id);
          } else {
            for (let i = 0; i < 2; i++) {
              const id = await createSandbox();
              expect(id).toBeDefined();
              createdIds.push(id!);
            }
            const kills = createdIds.map((id) => api(`/sandboxes/${id}`, { method: 'DELETE' }).catch(() => undefined));
            await new Promise((r) => setTimeout(r, 30));
            await fault.kill();
            await fault.recover();
            await Promise.all(kills);
          }
          const state = await recoveredState(createdIds);
          await cleanUp();
          const after = await settled(stack, POOL_SIZE);
          const leaked = unowned(after.counts, after.account);
          summary.push(
            `  ${fault.name.padEnd(10)} mid-${phase}: records lost ${state.lost.length}, stuck ${state.stuck}, running after recovery ${state.running.length}, ` +
              `leaked ${JSON.stringify(leaked)}; host after ${JSON.stringify(after.counts)} (before ${JSON.stringify(before.counts)})`,
          );
          expect(state.lost).toEqual([]);
          expect(state.stuck).toBe(0);
          expect(after.account.sandboxes).toBe(0);
          expect(leaked).toEqual({});
          // Pools are bounded: slots kept free never exceed what the agent keeps ready plus its idle allowance.
          expect(after.account.slotsFree).toBeLessThanOrEqual(SLOT_PREFILL + SLOT_MAX_IDLE);
        });
      }
    });
  }
});
