import 'reflect-metadata';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { INestApplicationContext } from '@nestjs/common';
import { DEFAULT_NETWORK_SETTINGS, ErrorCode, SandboxState } from '@kiln/contracts';
import { SchedulerEnv, loadConfig } from '@kiln/config';
import { PrismaService, SandboxRepository, TeamRepository, TemplateRepository } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import { MessagingClient, Subjects } from '@kiln/messaging';
import { PrivateServer, RestartableServer, TcpRelay, eventually, freePort, startPrivateNats, startRestartableRedis } from '@kiln/testing';
import { ReconcileService } from '../src/reconcile/reconcile.service';
import { FakeHostAgent } from './support/fake-host-agent';
import { registerTestHost, testHostRecord } from './support/fleet-hosts';
import { startCaller, startScheduler } from './support/scheduler-app';

/** A short create deadline chain, in the required order, so deadlines pass within a test. */
const CHAIN = {
  SANDBOX_GUEST_INIT_DEADLINE_MS: '500',
  SANDBOX_HOST_CREATE_DEADLINE_MS: '2000',
  SANDBOX_CREATE_TIMEOUT_MS: '3000',
  SANDBOX_RECONCILE_GRACE_MS: '1500',
};
const HOST_CREATE_DEADLINE_MS = Number(CHAIN.SANDBOX_HOST_CREATE_DEADLINE_MS);
const GATEWAY_WAIT_MS = Number(CHAIN.SANDBOX_CREATE_TIMEOUT_MS);

async function healthOf(app: NestFastifyApplication): Promise<{ status: number; body: { dependencies: Record<string, { status: string; error?: string }> } }> {
  const response = await fetch(`${await app.getUrl()}/health`);
  return { status: response.status, body: (await response.json()) as { dependencies: Record<string, { status: string; error?: string }> } };
}

function createCommand(teamId: string, timeoutSeconds = 300) {
  return { teamId, templateRef: 'base', timeoutSeconds, autoPause: false, network: DEFAULT_NETWORK_SETTINGS, metadata: {}, envVars: {} };
}

describe('crash-safe sandbox lifecycle (real Postgres, Redis, NATS, a fake host agent)', () => {
  let db: TestDatabase;
  let nats: PrivateServer;
  let redis: RestartableServer;
  let host: FakeHostAgent;
  let scheduler: NestFastifyApplication;
  let caller: INestApplicationContext;
  let client: MessagingClient;
  let teamId: string;
  let hostId: string;

  beforeAll(async () => {
    [db, nats, redis] = await Promise.all([createTestDatabase(), startPrivateNats(), startRestartableRedis()]);
    host = new FakeHostAgent();
    await host.start();
    const env = loadConfig(SchedulerEnv, {
      DATABASE_URL: db.url,
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      KILN_SANDBOX_TOKEN_KEY: 'crash-safety-sandbox-token-key-0123456789',
      LOG_LEVEL: 'silent',
      HTTP_PORT: String(await freePort()),
      // The test drives reconcile itself.
      RECONCILE_INTERVAL_SECONDS: '3600',
      ...CHAIN,
    });
    scheduler = await startScheduler(env);
    caller = await startCaller(env.NATS_URL);
    client = caller.get(MessagingClient);
    teamId = (await scheduler.get(TeamRepository).ensure(`crash-${db.name}`)).id;
    await scheduler
      .get(TemplateRepository)
      .ensurePublicTemplate({ templateId: 'base', alias: 'base', vcpus: 1, memoryMib: 512, diskMib: 2048, envdVersion: '0.5.7', contentHash: 'crash-safety' });
    hostId = 'fake-host';
    await registerTestHost(scheduler, testHostRecord(hostId, host.address, { readyCloneTemplates: ['base'] }));
  }, 60_000);

  afterAll(async () => {
    await caller?.close();
    await scheduler?.close();
    await host?.stop();
    await db?.drop();
    await nats?.stop();
    await redis?.dispose();
    // Closing waits for the scheduler's calls to the fake host that never answers; on a loaded host that takes a while.
  }, 60_000);

  beforeEach(() => {
    host.createAnswers = true;
  });

  /** A row exactly as a scheduler killed (-9) mid-create leaves it: in `state`, its deadline `ageMs` ago. */
  async function leaveRow(id: string, state: SandboxState.Pending | SandboxState.Starting, deadlinePassedMsAgo: number): Promise<void> {
    await scheduler.get(PrismaService).sandbox.create({
      data: {
        id,
        teamId,
        templateId: 'base',
        state,
        hostId: state === SandboxState.Starting ? hostId : null,
        vcpus: 1,
        memoryMib: 512,
        diskMib: 2048,
        timeoutSeconds: 300,
        expiresAt: new Date(Date.now() + 300_000),
        deadlineAt: new Date(Date.now() - deadlinePassedMsAgo),
      },
    });
  }

  async function listedIds(): Promise<string[]> {
    const page = await client.request(Subjects.sandboxList, { teamId, limit: 1000 }, 5_000);
    return page.sandboxes.map((s) => s.sandboxId);
  }

  it('refuses to store a transitional row without a deadline (CHECK constraint)', async () => {
    await expect(
      scheduler.get(PrismaService).sandbox.create({
        data: { id: 'nodeadline1', teamId, templateId: 'base', state: SandboxState.Starting, vcpus: 1, memoryMib: 512, diskMib: 2048, timeoutSeconds: 30, expiresAt: new Date() },
      }),
    ).rejects.toThrow(/sandboxes_transition_has_deadline/);
  });

  it('answers a create whose host never replies before the gateway stops waiting, fails the row and destroys the VM', async () => {
    host.createAnswers = false;
    const started = Date.now();
    const failure = await client.request(Subjects.sandboxCreate, createCommand(teamId), GATEWAY_WAIT_MS).catch((error: unknown) => error);
    const elapsed = Date.now() - started;
    // 504 at the gateway: the create ran out of its own deadline, well before the gateway's.
    expect(failure).toMatchObject({ code: ErrorCode.Timeout, message: 'create did not finish within 2 s: host fake-host did not answer in time' });
    expect(elapsed).toBeLessThan(GATEWAY_WAIT_MS);
    expect(elapsed).toBeGreaterThanOrEqual(HOST_CREATE_DEADLINE_MS - 500);

    const row = await scheduler.get(PrismaService).sandbox.findFirstOrThrow({ where: { teamId, hostId }, orderBy: { createdAt: 'desc' } });
    expect(row.state).toBe(SandboxState.Error);
    expect(row.stateReason).toBe('create did not finish within 2 s: host fake-host did not answer in time');
    expect(row.deadlineAt).toBeNull();
    // The host was told the create's own deadline, which is within the gateway's wait. (Measured from when the
    // request was sent: the scheduler sets it on receipt, which a loaded machine delays by some 100 ms.)
    const sentDeadline = host.createDeadlines[host.createDeadlines.length - 1];
    expect(sentDeadline).toBeGreaterThanOrEqual(started + HOST_CREATE_DEADLINE_MS);
    expect(sentDeadline).toBeLessThan(started + GATEWAY_WAIT_MS);
    await eventually('the VM of the failed create to be destroyed', () => host.destroyed.includes(row.id), { timeoutMs: 5_000 });
  }, 20_000);

  it('fails a starting row a killed scheduler left past its deadline: error with a reason, VM destroyed, never listed as running', async () => {
    await leaveRow('leftstarting1', SandboxState.Starting, 5_000);
    host.running.add('leftstarting1');
    // Before any sweep the API already does not present it as running.
    expect(await listedIds()).not.toContain('leftstarting1');

    const report = await scheduler.get(ReconcileService).reconcileOnce();
    expect(report.failedPastDeadline).toContain('leftstarting1');
    const row = await scheduler.get(SandboxRepository).find('leftstarting1');
    expect(row).toMatchObject({ state: SandboxState.Error, stateReason: 'create did not finish within 2 s (scheduler restarted?)', deadlineAt: null });
    expect(host.destroyed).toContain('leftstarting1');
    expect(host.running.has('leftstarting1')).toBe(false);
    const events = await scheduler.get(SandboxRepository).events('leftstarting1');
    expect(events.map((e) => [e.fromState, e.toState])).toEqual([[SandboxState.Starting, SandboxState.Error]]);
  });

  it('fails a pending row left before placement, and a get of an overdue row settles it at once', async () => {
    await leaveRow('leftpending1', SandboxState.Pending, 5_000);
    await leaveRow('leftpending2', SandboxState.Pending, 1);
    expect(await listedIds()).not.toEqual(expect.arrayContaining(['leftpending1']));
    // Within the grace reconcile leaves it, but reading it fails it: a get never presents it as running.
    await expect(client.request(Subjects.sandboxGet, { teamId, sandboxId: 'leftpending2' }, 5_000)).rejects.toMatchObject({ code: ErrorCode.NotFound });
    expect(await scheduler.get(SandboxRepository).find('leftpending2')).toMatchObject({ state: SandboxState.Error });

    const report = await scheduler.get(ReconcileService).reconcileOnce();
    expect(report.failedPastDeadline).toContain('leftpending1');
    expect(await scheduler.get(SandboxRepository).find('leftpending1')).toMatchObject({
      state: SandboxState.Error,
      stateReason: 'create did not finish within 2 s (scheduler restarted?)',
    });
  });

  it('leaves a starting row within its deadline alone even though its host does not list it yet', async () => {
    await leaveRow('inflight1', SandboxState.Starting, -60_000);
    const report = await scheduler.get(ReconcileService).reconcileOnce();
    expect(report.failedPastDeadline).not.toContain('inflight1');
    expect(report.markedGone).not.toContain('inflight1');
    expect(await scheduler.get(SandboxRepository).find('inflight1')).toMatchObject({ state: SandboxState.Starting });
    await scheduler.get(PrismaService).sandbox.delete({ where: { id: 'inflight1' } });
  });

  it('expires a running sandbox whose timeout job was lost (Redis restarted empty) through the sweep', async () => {
    const view = await client.request(Subjects.sandboxCreate, createCommand(teamId, 1), GATEWAY_WAIT_MS);
    expect(view.state).toBe(SandboxState.Running);
    const row = await scheduler.get(SandboxRepository).find(view.sandboxId);
    expect(row?.deadlineAt).toBeNull();
    // A Redis without persistence restarts empty: the timeout job is gone.
    await redis.stop();
    await redis.start();
    await new Promise((r) => setTimeout(r, 1_000));
    await scheduler.get(PrismaService).sandbox.update({ where: { id: view.sandboxId }, data: { expiresAt: new Date(Date.now() - 60_000) } });
    const report = await scheduler.get(ReconcileService).reconcileOnce();
    expect(report.expired).toContain(view.sandboxId);
    expect(await scheduler.get(SandboxRepository).find(view.sandboxId)).toMatchObject({ state: SandboxState.Killed, stateReason: 'timeout' });
    await eventually('the expired VM to be destroyed', () => host.destroyed.includes(view.sandboxId), { timeoutMs: 5_000 });
  }, 30_000);

  it('with Redis down, creates and kills still answer promptly, /health names redis, and all recovers when it is back', async () => {
    await redis.stop();
    try {
      const started = Date.now();
      const view = await client.request(Subjects.sandboxCreate, createCommand(teamId), GATEWAY_WAIT_MS);
      expect(view.state).toBe(SandboxState.Running);
      expect(await client.request(Subjects.sandboxKill, { teamId, sandboxId: view.sandboxId }, 5_000)).toEqual({ killed: true });
      expect(Date.now() - started).toBeLessThan(5_000);
      const health = await healthOf(scheduler);
      expect(health.status).toBe(503);
      expect(health.body.dependencies.redis.status).toBe('down');
      expect(health.body.dependencies.postgres.status).toBe('up');
    } finally {
      await redis.start();
    }
    await eventually('scheduler health to recover after Redis is back', async () => (await healthOf(scheduler)).status === 200, { timeoutMs: 15_000 });
    const view = await client.request(Subjects.sandboxCreate, createCommand(teamId), GATEWAY_WAIT_MS);
    expect(view.state).toBe(SandboxState.Running);
  }, 40_000);
});

describe('scheduler with Postgres unreachable (through a relay the test cuts)', () => {
  let db: TestDatabase;
  let nats: PrivateServer;
  let redis: RestartableServer;
  let relay: TcpRelay;
  let scheduler: NestFastifyApplication;
  let caller: INestApplicationContext;
  let client: MessagingClient;
  let teamId: string;

  beforeAll(async () => {
    [db, nats, redis] = await Promise.all([createTestDatabase(), startPrivateNats(), startRestartableRedis()]);
    const direct = new URL(db.url);
    relay = await TcpRelay.start({ host: direct.hostname, port: Number(direct.port || 5432) });
    const relayed = new URL(db.url);
    relayed.port = String(relay.port);
    const env = loadConfig(SchedulerEnv, {
      DATABASE_URL: relayed.toString(),
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      KILN_SANDBOX_TOKEN_KEY: 'crash-safety-sandbox-token-key-0123456789',
      LOG_LEVEL: 'silent',
      HTTP_PORT: String(await freePort()),
      RECONCILE_INTERVAL_SECONDS: '1',
    });
    scheduler = await startScheduler(env);
    caller = await startCaller(env.NATS_URL);
    client = caller.get(MessagingClient);
    teamId = (await scheduler.get(TeamRepository).ensure(`pgdown-${db.name}`)).id;
  }, 60_000);

  afterAll(async () => {
    await relay?.restore();
    await caller?.close();
    await scheduler?.close();
    await relay?.cut();
    await db?.drop();
    await nats?.stop();
    await redis?.dispose();
  }, 60_000);

  it('answers unavailable with Retry-After within seconds, /health names postgres, and recovers when it is reachable again', async () => {
    const list = () => client.request(Subjects.sandboxList, { teamId, limit: 10 }, 10_000);
    expect((await list()).sandboxes).toEqual([]);
    await relay.cut();
    try {
      const started = Date.now();
      const failure = await list().catch((error: unknown) => error);
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(failure).toMatchObject({ code: ErrorCode.Unavailable, retryAfterSeconds: expect.any(Number) });
      expect((failure as Error).message).toMatch(/^database unavailable/);
      const health = await healthOf(scheduler);
      expect(health.status).toBe(503);
      expect(health.body.dependencies.postgres.status).toBe('down');
      expect(health.body.dependencies.nats.status).toBe('up');
      // The periodic reconcile pass fails too; the process must survive it (no unhandled rejection).
      await new Promise((r) => setTimeout(r, 1_500));
    } finally {
      await relay.restore();
    }
    await eventually('the scheduler to answer again once Postgres is reachable', async () => (await list().catch(() => undefined)) !== undefined, { timeoutMs: 15_000 });
    expect((await healthOf(scheduler)).status).toBe(200);
  }, 40_000);
});
