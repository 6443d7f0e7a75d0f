import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Client as PgClient } from 'pg';
import { Sandbox } from 'e2b';
import { generateKilnNatsUsers, renderNatsServerConfig } from '@kiln/messaging';
import { SandboxState as HostSandboxState } from '@kiln/proto/hostagent';
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
    // Likewise for a pause or resume orphaned by a kill: its row is settled to what the host has within seconds. Still
    // well above what either takes here (a pause ~0.3-1.6 s, a resume ~1.3-1.5 s under TCG on a busy host).
    SANDBOX_PAUSE_DEADLINE_MS: '8000',
    SANDBOX_RESUME_DEADLINE_MS: '15000',
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
 * The clones ready in the `base` template's pool. The templates directory is shared with the machine's other stacks,
 * so the agent may also keep pools for templates that come and go (a benchmark's, say): those are still counted as
 * pooled clones (kiln_agent_clone_pool_ready) and so owned, but only `base`'s pool says whether the host is at rest.
 */
async function basePoolReady(stack: StackInfo): Promise<number | undefined> {
  const agent = hostAgentClient(stack.hostAgent.grpcAddress, internalTlsFiles(stack.internalTlsDir, 'scheduler'));
  try {
    return (await agent.hostInfo().catch(() => undefined))?.templates.find((t) => t.templateId === 'base')?.readyClones;
  } finally {
    agent.close();
  }
}

/**
 * The host at rest: the clone pool full again (the agent refills it after every take and replaces a clone that
 * died), nothing being prepared, and the counts unchanged for a few seconds.
 */
async function settled(stack: StackInfo, poolSize: number, pausedSandboxes = 0): Promise<{ counts: ResourceCounts; account: AgentAccount }> {
  let previous = '';
  let lastAtRest: { counts: ResourceCounts; account: AgentAccount } | undefined;
  try {
    return await eventually(
      'the host to come to rest (pool full, nothing being prepared, everything owned)',
      async () => {
        await new Promise((r) => setTimeout(r, 2_000));
        const account = await agentAccount(stack);
        const counts = resourceCounts(stack);
        const basePool = await basePoolReady(stack);
        const now = JSON.stringify({ account, counts, basePool });
        const poolFull = basePool === poolSize;
        const atRest = account !== undefined && poolFull && account.slotsPreparing === 0 && now === previous;
        previous = now;
        if (!atRest) return undefined;
        lastAtRest = { counts, account: account! };
        // A VMM being killed or a slot being released in the background is on its way out, not leaked: at rest is
        // also everything owned, waited for; what is still unowned when the wait ends is a leak (asserted by callers).
        return Object.keys(unowned(counts, account!, pausedSandboxes)).length === 0 ? lastAtRest : undefined;
      },
      { timeoutMs: 120_000 },
    );
  } catch (error) {
    if (!lastAtRest) throw error;
    console.log(`host at rest with unowned resources ${JSON.stringify(unowned(lastAtRest.counts, lastAtRest.account, pausedSandboxes))}:\n${hostDiagnostics(stack)}`);
    return lastAtRest;
  }
}

/** What a leak report needs to name the leaked thing: the stack's VMM processes and its clone and sandbox dirs. */
function hostDiagnostics(stack: StackInfo): string {
  const vmms = run('ps', ['-eo', 'pid,ppid,stat,etimes,args', '--sort=start_time'])
    .split('\n')
    .filter((line) => line.includes('qemu-system') && line.includes(`${stack.dataDir}/`))
    .map((line) => line.replace(/\s+-(append|kernel|initrd) \S+("[^"]*")?/g, '').slice(0, 400));
  const dirs = (name: string) => (existsSync(join(stack.dataDir, name)) ? readdirSync(join(stack.dataDir, name)).join(' ') : '');
  return [`qemu processes:`, ...vmms, `clones: ${dirs('clones')}`, `sandboxes: ${dirs('sandboxes')}`].join('\n');
}

/**
 * Whatever the host holds that nothing owns. Every qemu, clone dir and qcow2 layer belongs to a pooled clone or a
 * sandbox (a paused one keeps its clone dir and layer but no qemu); every slot namespace (with its veth and nft
 * table) is one the pool leased or keeps free; every sandbox dir is a live or paused sandbox's.
 */
function unowned(counts: ResourceCounts, account: AgentAccount, pausedSandboxes = 0): Record<string, number> {
  const owners = account.pooledClones + account.sandboxes;
  const slots = account.slotsLeased + account.slotsFree;
  const excess: Record<string, number> = {
    qemu: counts.qemu - (owners - pausedSandboxes),
    cloneDirs: counts.cloneDirs - owners,
    qcow2Layers: counts.qcow2Layers - owners,
    sandboxDirs: counts.sandboxDirs - account.sandboxes,
    netns: counts.netns - slots,
    veths: counts.veths - slots,
    nftTables: counts.nftTables - (slots + 1),
  };
  return Object.fromEntries(Object.entries(excess).filter(([, n]) => n !== 0));
}

/** The host agent's on-disk record of a sandbox: its clone dir and, once a pause committed, `paused`. */
interface HostRecord {
  cloneDir?: string;
  paused?: { checkpointDir: string };
}

function hostRecord(stack: StackInfo, sandboxId: string): HostRecord | undefined {
  try {
    return JSON.parse(readFileSync(join(stack.dataDir, 'sandboxes', sandboxId, 'sandbox.json'), 'utf8')) as HostRecord;
  } catch {
    return undefined;
  }
}

/** Pause checkpoints (`clones/<clone>/paused`, by clone dir name) and fork checkpoints (`checkpoints/forks/*`) on the host. */
function checkpointDirs(stack: StackInfo): { pausedClones: string[]; forks: string[] } {
  const clones = join(stack.dataDir, 'clones');
  const forks = join(stack.dataDir, 'checkpoints', 'forks');
  return {
    pausedClones: existsSync(clones) ? readdirSync(clones).filter((clone) => existsSync(join(clones, clone, 'paused'))).sort() : [],
    forks: existsSync(forks) ? readdirSync(forks) : [],
  };
}

/** Polls `check` every few ms (the windows aimed at last a few hundred ms): whether it held before `timeoutMs`. */
async function until(check: () => boolean | Promise<boolean>, timeoutMs: number, everyMs = 5): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return false;
}

/**
 * A kill mid-pause or mid-resume, aimed at one side of the host's commit point (saving its record with `paused` for a
 * pause, without it for a resume): `before` kills while the host is inside the transition and has not committed,
 * `after` kills as soon as the record shows the commit (while the host still releases the VMM and slot, or brings
 * the guest up, and before the scheduler has stored the outcome).
 */
interface TransitionFault {
  component: 'host-agent' | 'scheduler';
  phase: 'pause' | 'resume';
  aim: 'before' | 'after';
  /** The route a resume goes through. */
  via?: 'resume' | 'connect';
}

const TRANSITION_FAULTS: TransitionFault[] = [
  { component: 'host-agent', phase: 'pause', aim: 'before' },
  { component: 'host-agent', phase: 'pause', aim: 'after' },
  { component: 'host-agent', phase: 'resume', aim: 'before', via: 'connect' },
  { component: 'host-agent', phase: 'resume', aim: 'after', via: 'resume' },
  { component: 'scheduler', phase: 'pause', aim: 'before' },
  { component: 'scheduler', phase: 'resume', aim: 'after', via: 'connect' },
];

/** The file each transition fault writes before its pause, read back in whatever state the sandbox ends. */
const MARKER_PATH = '/home/user/before-fault.txt';

/**
 * The fault battery (issue 10): each part of the platform (host agent, one VM, scheduler, gateway, NATS, Redis,
 * Postgres) is killed with SIGKILL in the middle of a create and in the middle of a kill, then brought back. After
 * recovery and reconcile: no sandbox record lost, none stuck in a transitional state, every sandbox that runs is
 * usable, and the host holds exactly what it held before (no leaked netns, veth, qemu, qcow2 layer, clone dir,
 * sandbox dir or nft table). Its counts are printed per fault. The host agent and the scheduler are also killed
 * mid-pause and mid-resume (issue 13), on either side of the host's commit point.
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
  /**
   * Issue 13: SIGKILL of the host agent or the scheduler mid-pause and mid-resume (through the public API). After the
   * component is back, the sandbox ends running or paused (never half-way, never lost), the API, the row and the host
   * agree on which, and that state works: a paused one resumes with the file written before the pause, a running one
   * runs a command and has the file. The host holds nothing beyond its account (a paused sandbox: its clone dir and
   * layer, no VMM or slot), a pause checkpoint only for a paused sandbox, and no fork checkpoint.
   */
  describe('mid-pause and mid-resume', () => {
    const sdkOpts = () => ({ apiKey: stack.apiKey, apiUrl: stack.apiUrl, sandboxUrl: stack.sandboxUrl, domain: stack.domain });
    const rowOf = async (id: string) => (await query<{ state: string; state_reason: string | null }>('select state::text as state, state_reason from sandboxes where id = $1', [id]))[0];

    /** Pause checkpoints exactly for the sandboxes the host has paused; no fork checkpoint. */
    async function checkpointsMatchHost(agent: ReturnType<typeof hostAgentClient>): Promise<void> {
      const { sandboxes } = await agent.listSandboxes();
      const pausedClones = sandboxes
        .filter((s) => s.state === HostSandboxState.SANDBOX_STATE_PAUSED)
        .map((s) => hostRecord(stack, s.sandboxId)?.cloneDir)
        .map((dir) => (dir ? basename(dir) : 'no clone dir'))
        .sort();
      expect(checkpointDirs(stack)).toEqual({ pausedClones, forks: [] });
    }

    for (const fault of TRANSITION_FAULTS) {
      const title = `${fault.component} killed with SIGKILL mid-${fault.phase}${fault.via ? ` (POST /${fault.via})` : ''}, ${fault.aim} the host's commit`;
      // The host is at rest here: the previous test ended by waiting for it and checking that nothing leaked.
      it(`${title}: ends running or paused, that state works, nothing leaked`, async () => {
        const id = await createSandbox();
        expect(id).toBeDefined();
        const sandboxId = id!;
        const marker = `written before: ${title}`;
        await (await Sandbox.connect(sandboxId, sdkOpts())).files.write(MARKER_PATH, marker);
        if (fault.phase === 'resume') {
          expect((await api(`/sandboxes/${sandboxId}/pause`, { method: 'POST', body: '{}' })).status).toBe(204);
          expect(hostRecord(stack, sandboxId)?.paused).toBeDefined();
        }
        const cloneDir = hostRecord(stack, sandboxId)?.cloneDir;
        expect(cloneDir).toBeDefined();

        let agent = hostAgentClient(stack.hostAgent.grpcAddress, internalTlsFiles(stack.internalTlsDir, 'scheduler'));
        const hostCommitted = () => {
          const paused = hostRecord(stack, sandboxId)?.paused !== undefined;
          return fault.phase === 'pause' ? paused : !paused;
        };
        // The trigger of each aim: the host inside the transition and not committed, or the commit on its disk.
        const trigger: () => boolean | Promise<boolean> =
          fault.aim === 'after'
            ? hostCommitted
            : fault.component === 'scheduler'
              ? async () => (await rowOf(sandboxId))?.state === (fault.phase === 'pause' ? 'pausing' : 'resuming') && !hostCommitted()
              : fault.phase === 'pause'
                ? () => existsSync(join(cloneDir!, 'paused', 'device-state')) && !hostCommitted()
                : async () => (await agent.getSandbox({ sandboxId }).catch(() => undefined))?.state === HostSandboxState.SANDBOX_STATE_RESUMING && !hostCommitted();

        const started = Date.now();
        let clientStatus: number | undefined;
        const path = fault.phase === 'pause' ? `/sandboxes/${sandboxId}/pause` : `/sandboxes/${sandboxId}/${fault.via}`;
        void api(path, { method: 'POST', body: fault.phase === 'pause' ? '{}' : JSON.stringify({ timeout: 600 }) }).then(
          (r) => (clientStatus = r.status),
          () => (clientStatus = 0),
        );
        const triggered = await until(trigger, 20_000);
        await killApp(stack, fault.component);
        const killedAfterMs = Date.now() - started;
        // For a killed agent its record is final now; a killed scheduler's host goes on, so this is at the kill.
        const hit = hostCommitted() ? 'after' : 'before';
        const rowAtKill = (await rowOf(sandboxId))?.state;
        agent.close();
        stack = await restartApp(stack, fault.component);
        agent = hostAgentClient(stack.hostAgent.grpcAddress, internalTlsFiles(stack.internalTlsDir, 'scheduler'));
        try {
          // Settled by the caller's own error handling or, once its deadline passed, by reconcile from what the host has.
          const row = await eventually(
            'the row to leave its transition',
            async () => {
              const r = await rowOf(sandboxId);
              return r && !TRANSITIONAL.includes(r.state) ? r : undefined;
            },
            { timeoutMs: 120_000, intervalMs: 500 },
          );
          const settledAfterMs = Date.now() - started;
          expect({ sandboxId, state: row.state }).toEqual({ sandboxId, state: expect.stringMatching(/^(running|paused)$/) });
          const shown = await api(`/sandboxes/${sandboxId}`);
          expect(shown.status).toBe(200);
          const apiState = ((await shown.json()) as { state: string }).state;
          const onHost = await eventually('the host agent to answer', async () => agent.getSandbox({ sandboxId }).catch(() => undefined), { timeoutMs: 60_000 });
          const hostState = onHost.state === HostSandboxState.SANDBOX_STATE_PAUSED ? 'paused' : onHost.state === HostSandboxState.SANDBOX_STATE_RUNNING ? 'running' : `other (${onHost.state})`;
          // Not half-way anywhere: the API, the row and the host say the same.
          expect({ api: apiState, row: row.state, host: hostState }).toEqual({ api: row.state, row: row.state, host: row.state });
          const ended = row.state;

          // At rest with the sandbox running or paused: nothing beyond the account, a checkpoint only if it is paused.
          const mid = await settled(stack, POOL_SIZE, ended === 'paused' ? 1 : 0);
          expect(unowned(mid.counts, mid.account, ended === 'paused' ? 1 : 0)).toEqual({});
          await checkpointsMatchHost(agent);

          // Whatever state it reports works.
          if (ended === 'paused') {
            expect(existsSync(join(cloneDir!, 'paused', 'manifest.json'))).toBe(true);
            expect((await api(`/sandboxes/${sandboxId}/connect`, { method: 'POST', body: JSON.stringify({ timeout: 600 }) })).status).toBe(201);
          }
          const sandbox = await Sandbox.connect(sandboxId, sdkOpts());
          expect((await sandbox.commands.run(`echo alive && cat ${MARKER_PATH}`)).stdout).toBe(`alive\n${marker}`);
          await checkpointsMatchHost(agent);

          await cleanUp();
          const after = await settled(stack, POOL_SIZE);
          const leaked = unowned(after.counts, after.account);
          summary.push(
            `  ${fault.component.padEnd(10)} mid-${fault.phase.padEnd(6)} aimed ${fault.aim.padEnd(6)} hit ${hit.padEnd(6)} the host's commit ` +
              `(${triggered ? 'trigger seen' : 'trigger NOT seen'}, killed ${killedAfterMs} ms after the request, row ${rowAtKill} then): ` +
              `ended ${ended} (${row.state_reason ?? ''}) after ${settledAfterMs} ms, client got ${clientStatus ?? 'no answer yet'}, ` +
              `works: yes; leaked ${JSON.stringify(leaked)}; checkpoints left ${JSON.stringify(checkpointDirs(stack))}`,
          );
          expect(leaked).toEqual({});
          expect(checkpointDirs(stack)).toEqual({ pausedClones: [], forks: [] });
          // The case aimed at is the one hit (the triggers sit on the two sides of the commit).
          expect({ triggered, hit }).toEqual({ triggered: true, hit: fault.aim });
        } finally {
          agent.close();
        }
      });
    }
  });
});
