import 'reflect-metadata';
import * as grpc from '@grpc/grpc-js';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { INestApplicationContext } from '@nestjs/common';
import { DEFAULT_NETWORK_SETTINGS, ErrorCode, SandboxState, SandboxView } from '@kiln/contracts';
import { SchedulerEnv, loadConfig } from '@kiln/config';
import { PrismaService, SandboxRepository, TeamRepository, TemplateRepository } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import { MessagingClient, Subjects } from '@kiln/messaging';
import { PrivateServer, eventually, freePort, startPrivateNats, startPrivateRedis } from '@kiln/testing';
import { ReconcileService } from '../src/reconcile/reconcile.service';
import { SandboxTokens } from '../src/lifecycle/sandbox-tokens';
import { FakeHostAgent } from './support/fake-host-agent';
import { registerTestHost, testHostRecord } from './support/fleet-hosts';
import { startCaller, startScheduler } from './support/scheduler-app';

jest.setTimeout(60_000);

const TOKEN_KEY = 'pause-resume-test-sandbox-token-key-0123456789';
const EGRESS = { allowOut: ['10.1.2.3/32'], denyOut: ['0.0.0.0/0'] };

interface CreateExtras {
  timeoutSeconds?: number;
  autoPause?: boolean;
  autoPauseMemory?: boolean;
  autoResume?: boolean;
  templateRef?: string;
  metadata?: Record<string, string>;
}

/**
 * Pause, resume, connect, lifecycle, fork and named snapshots, driven over NATS as the gateway drives them, against
 * the real scheduler (Postgres, Redis, NATS) and fakes of two host agents (separate services, real gRPC).
 */
describe('pause, resume, fork and snapshots (real Postgres, Redis, NATS; fake host agents)', () => {
  let db: TestDatabase;
  let nats: PrivateServer;
  let redis: PrivateServer;
  let hostA: FakeHostAgent;
  let hostB: FakeHostAgent;
  let scheduler: NestFastifyApplication;
  let caller: INestApplicationContext;
  let client: MessagingClient;
  let prisma: PrismaService;
  let sandboxes: SandboxRepository;
  let teamId: string;
  const tokens = new SandboxTokens({ KILN_SANDBOX_TOKEN_KEY: TOKEN_KEY } as SchedulerEnv);

  async function registerHosts(preferred: 'a' | 'b'): Promise<void> {
    for (const [hostId, host] of [['host-a', hostA], ['host-b', hostB]] as const) {
      await registerTestHost(
        scheduler,
        // Placement prefers a host with a clone ready: this decides where a plain create lands.
        testHostRecord(hostId, host.address, { readyCloneTemplates: hostId === `host-${preferred}` ? ['base'] : [] }),
      );
    }
  }

  beforeAll(async () => {
    [db, nats, redis] = await Promise.all([createTestDatabase(), startPrivateNats(), startPrivateRedis()]);
    hostA = new FakeHostAgent('host-a');
    hostB = new FakeHostAgent('host-b');
    await Promise.all([hostA.start(), hostB.start()]);
    const env = loadConfig(SchedulerEnv, {
      DATABASE_URL: db.url,
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      KILN_SANDBOX_TOKEN_KEY: TOKEN_KEY,
      LOG_LEVEL: 'silent',
      HTTP_PORT: String(await freePort()),
      RECONCILE_INTERVAL_SECONDS: '3600',
      SANDBOX_PAUSE_DEADLINE_MS: '3000',
      SANDBOX_RESUME_DEADLINE_MS: '3000',
    });
    scheduler = await startScheduler(env);
    caller = await startCaller(env.NATS_URL);
    client = caller.get(MessagingClient);
    prisma = scheduler.get(PrismaService);
    sandboxes = scheduler.get(SandboxRepository);
    teamId = (await scheduler.get(TeamRepository).ensure(`pause-${db.name}`)).id;
    await scheduler
      .get(TemplateRepository)
      .ensurePublicTemplate({ templateId: 'base', alias: 'base', vcpus: 1, memoryMib: 512, diskMib: 2048, envdVersion: '0.6.4', contentHash: 'fake-build' });
    await registerHosts('a');
  }, 60_000);

  afterAll(async () => {
    await caller?.close();
    await scheduler?.close();
    await hostA?.stop();
    await hostB?.stop();
    await db?.drop();
    await nats?.stop();
    await redis?.stop();
  }, 60_000);

  beforeEach(() => {
    for (const host of [hostA, hostB]) {
      host.pauseOutcome = undefined;
      host.afterFailedPause = 'running';
      host.resumeOutcome = undefined;
      host.resumeDelayMs = 0;
      host.failForkAt = new Set();
    }
  });

  function create(extra: CreateExtras = {}, team = teamId): Promise<SandboxView> {
    return client.request(
      Subjects.sandboxCreate,
      {
        teamId: team,
        templateRef: extra.templateRef ?? 'base',
        timeoutSeconds: extra.timeoutSeconds ?? 300,
        autoPause: extra.autoPause ?? false,
        autoPauseMemory: extra.autoPauseMemory,
        autoResume: extra.autoResume,
        network: { ...DEFAULT_NETWORK_SETTINGS, egress: EGRESS },
        metadata: extra.metadata ?? {},
        envVars: {},
      },
      10_000,
    );
  }

  const pause = (sandboxId: string, keepMemory?: boolean) => client.request(Subjects.sandboxPause, { teamId, sandboxId, keepMemory }, 10_000);
  const resume = (sandboxId: string, timeoutSeconds?: number) => client.request(Subjects.sandboxResume, { teamId, sandboxId, timeoutSeconds }, 10_000);
  const connect = (sandboxId: string, timeoutSeconds?: number) => client.request(Subjects.sandboxConnect, { teamId, sandboxId, timeoutSeconds }, 10_000);
  const stateOf = async (sandboxId: string) => (await prisma.sandbox.findUniqueOrThrow({ where: { id: sandboxId } })).state;

  describe('pause and resume', () => {
    it('pauses a running sandbox (stored artifacts, no timeout job), answers a second pause with a conflict, and resumes it', async () => {
      const sandbox = await create({ metadata: { app: 'web' } });
      const host = sandbox.hostId === 'host-a' ? hostA : hostB;

      const paused = await pause(sandbox.sandboxId, true);
      expect(paused.state).toBe(SandboxState.Paused);
      expect(host.pauseRequests.at(-1)).toEqual({ sandboxId: sandbox.sandboxId, keepMemory: true });
      expect(await sandboxes.pauseOf(sandbox.sandboxId)).toMatchObject({ keepMemory: true, memoryBytes: 16 << 20, stateBytes: 4096, reported: true });
      const row = await prisma.sandbox.findUniqueOrThrow({ where: { id: sandbox.sandboxId } });
      expect(row.deadlineAt).toBeNull();
      expect(row.hostId).toBe(sandbox.hostId);

      // The SDK reads 409 as "already paused".
      await expect(pause(sandbox.sandboxId)).rejects.toMatchObject({ code: ErrorCode.Conflict, message: expect.stringContaining('already paused') });
      await expect(pause('nosuchsandbox')).rejects.toMatchObject({ code: ErrorCode.NotFound });

      // Listed as paused, not as running.
      const pausedList = await client.request(Subjects.sandboxList, { teamId, states: ['paused'], limit: 100 }, 5_000);
      expect(pausedList.sandboxes.map((s) => s.sandboxId)).toContain(sandbox.sandboxId);
      const runningList = await client.request(Subjects.sandboxList, { teamId, states: ['running'], limit: 100 }, 5_000);
      expect(runningList.sandboxes.map((s) => s.sandboxId)).not.toContain(sandbox.sandboxId);

      const before = Date.now();
      const resumed = await resume(sandbox.sandboxId, 120);
      expect(resumed.resumed).toBe(true);
      expect(resumed.sandbox.state).toBe(SandboxState.Running);
      expect(resumed.sandbox.envdAccessToken).toBe(sandbox.envdAccessToken);
      expect(Date.parse(resumed.sandbox.expiresAt)).toBeGreaterThanOrEqual(before + 119_000);
      // The host got the derived token, the stored egress policy and the timeout.
      expect(host.resumeRequests.at(-1)).toMatchObject({
        sandboxId: sandbox.sandboxId,
        envdAccessToken: tokens.envdAccessToken(sandbox.sandboxId),
        timeoutSeconds: 120,
        egress: EGRESS,
      });
      // E2B: resuming a running sandbox is a conflict; connect to it is a plain 200 (not resumed).
      await expect(resume(sandbox.sandboxId)).rejects.toMatchObject({ code: ErrorCode.Conflict });
      expect((await connect(sandbox.sandboxId, 10)).resumed).toBe(false);

      const transitions = (await sandboxes.events(sandbox.sandboxId)).map((e) => `${e.fromState}->${e.toState}`);
      expect(transitions).toEqual(expect.arrayContaining(['running->pausing', 'pausing->paused', 'paused->resuming', 'resuming->running']));
    });

    it('connect resumes a paused sandbox (resumed: true); two concurrent resumes reach the host once', async () => {
      const sandbox = await create();
      const host = sandbox.hostId === 'host-a' ? hostA : hostB;
      await pause(sandbox.sandboxId);
      host.resumeDelayMs = 400;
      const resumesBefore = host.resumeRequests.length;
      const [first, second, third] = await Promise.all([connect(sandbox.sandboxId, 60), connect(sandbox.sandboxId, 60), resume(sandbox.sandboxId, 60)]);
      expect(host.resumeRequests.length - resumesBefore).toBe(1);
      for (const reply of [first, second, third]) {
        expect(reply.resumed).toBe(true);
        expect(reply.sandbox.state).toBe(SandboxState.Running);
      }
      expect(await stateOf(sandbox.sandboxId)).toBe(SandboxState.Running);
    });

    it('a failed pause leaves the sandbox as the host has it: running (error answered), or paused', async () => {
      const sandbox = await create();
      const host = sandbox.hostId === 'host-a' ? hostA : hostB;
      host.pauseOutcome = { fail: grpc.status.INTERNAL, details: 'snapshot write failed' };
      await expect(pause(sandbox.sandboxId)).rejects.toMatchObject({ message: expect.stringContaining('snapshot write failed') });
      expect(await stateOf(sandbox.sandboxId)).toBe(SandboxState.Running);
      const reasons = (await sandboxes.events(sandbox.sandboxId)).map((e) => e.reason ?? '');
      expect(reasons.some((r) => r.includes('pause failed'))).toBe(true);

      // The host paused it but its answer failed: the row follows the host (GetSandbox), and the pause counts.
      host.afterFailedPause = 'paused';
      const settled = await pause(sandbox.sandboxId);
      expect(settled.state).toBe(SandboxState.Paused);
      expect(await sandboxes.pauseOf(sandbox.sandboxId)).toMatchObject({ keepMemory: true, reported: false });
    });

    it('a failed resume puts the sandbox back to paused with the reason; a host without it fails the row', async () => {
      const sandbox = await create();
      const host = sandbox.hostId === 'host-a' ? hostA : hostB;
      await pause(sandbox.sandboxId);
      host.resumeOutcome = { fail: grpc.status.FAILED_PRECONDITION, details: 'artifact memory.bin: sha256 mismatch' };
      await expect(connect(sandbox.sandboxId, 30)).rejects.toMatchObject({ code: ErrorCode.FailedPrecondition, message: expect.stringContaining('sha256 mismatch') });
      expect(await stateOf(sandbox.sandboxId)).toBe(SandboxState.Paused);
      const last = (await sandboxes.events(sandbox.sandboxId)).at(-1);
      expect(last).toMatchObject({ fromState: SandboxState.Resuming, toState: SandboxState.Paused, reason: expect.stringContaining('sha256 mismatch') });

      host.resumeOutcome = { fail: grpc.status.NOT_FOUND, details: 'no such sandbox' };
      await expect(connect(sandbox.sandboxId, 30)).rejects.toMatchObject({ code: ErrorCode.NotFound });
      expect(await stateOf(sandbox.sandboxId)).toBe(SandboxState.Error);
    });

    it('a resume whose host could not be asked afterwards stays resuming, and settles to what the host has at its deadline', async () => {
      const sandbox = await create();
      const host = sandbox.hostId === 'host-a' ? hostA : hostB;
      await pause(sandbox.sandboxId);
      // The agent committed the resume and died before answering; while it restarts it answers nothing.
      host.resumeOutcome = { fail: grpc.status.UNAVAILABLE, details: 'Connection dropped' };
      host.resumeCommitsBeforeFailing = true;
      host.getSandboxUnavailable = true;
      try {
        await expect(connect(sandbox.sandboxId, 30)).rejects.toMatchObject({ code: ErrorCode.Unavailable });
        // Not back to paused: the host runs it.
        expect(await stateOf(sandbox.sandboxId)).toBe(SandboxState.Resuming);
        // Past its deadline with the host still unable to answer: neither failed nor destroyed (it may be whole on the
        // host), it waits for the host for another deadline.
        await prisma.sandbox.update({ where: { id: sandbox.sandboxId }, data: { deadlineAt: new Date(Date.now() - 60_000) } });
        await scheduler.get(ReconcileService).reconcileOnce();
        expect(await stateOf(sandbox.sandboxId)).toBe(SandboxState.Resuming);
        expect(host.destroyed).not.toContain(sandbox.sandboxId);
        const row = await prisma.sandbox.findUniqueOrThrow({ where: { id: sandbox.sandboxId } });
        expect(row.deadlineAt!.getTime()).toBeGreaterThan(Date.now());
      } finally {
        host.resumeOutcome = undefined;
        host.resumeCommitsBeforeFailing = false;
        host.getSandboxUnavailable = false;
      }
      // The host answers again: the row follows what it has.
      await prisma.sandbox.update({ where: { id: sandbox.sandboxId }, data: { deadlineAt: new Date(Date.now() - 60_000) } });
      await scheduler.get(ReconcileService).reconcileOnce();
      expect(await stateOf(sandbox.sandboxId)).toBe(SandboxState.Running);
    });

    it('pauses instead of killing at the timeout with autoPause (keepMemory from autoPauseMemory)', async () => {
      const sandbox = await create({ timeoutSeconds: 1, autoPause: true, autoPauseMemory: false });
      const host = sandbox.hostId === 'host-a' ? hostA : hostB;
      expect(sandbox).toMatchObject({ autoPause: true, autoPauseMemory: false, autoResume: false });
      await eventually('the sandbox paused at its timeout', async () => (await stateOf(sandbox.sandboxId)) === SandboxState.Paused, { timeoutMs: 15_000 });
      expect(host.pauseRequests).toContainEqual({ sandboxId: sandbox.sandboxId, keepMemory: false });
      expect(host.destroyed).not.toContain(sandbox.sandboxId);
      // A late expiry of a paused sandbox does nothing.
      await scheduler.get(ReconcileService).reconcileOnce();
      expect(await stateOf(sandbox.sandboxId)).toBe(SandboxState.Paused);
    });

    it('a paused sandbox does not expire: its timeout job goes with the pause', async () => {
      const sandbox = await create({ timeoutSeconds: 2 });
      await pause(sandbox.sandboxId);
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      await scheduler.get(ReconcileService).reconcileOnce();
      expect(await stateOf(sandbox.sandboxId)).toBe(SandboxState.Paused);
    });

    it('a pause or resume whose driver died (row past its deadline) settles to what the host has, never lost', async () => {
      const reconcile = scheduler.get(ReconcileService);
      // Scheduler killed mid-pause after the host paused it: the row is left pausing, its deadline passed.
      const midPause = await create();
      const pauseHost = midPause.hostId === 'host-a' ? hostA : hostB;
      pauseHost.running.delete(midPause.sandboxId);
      pauseHost.paused.add(midPause.sandboxId);
      await prisma.sandbox.update({ where: { id: midPause.sandboxId }, data: { state: SandboxState.Pausing, deadlineAt: new Date(Date.now() - 60_000) } });
      // Scheduler killed mid-resume after the host resumed it.
      const midResume = await create();
      await prisma.sandbox.update({ where: { id: midResume.sandboxId }, data: { state: SandboxState.Resuming, deadlineAt: new Date(Date.now() - 60_000) } });
      // Scheduler killed mid-pause before the host did anything: the VM still runs.
      const notPaused = await create();
      await prisma.sandbox.update({ where: { id: notPaused.sandboxId }, data: { state: SandboxState.Pausing, deadlineAt: new Date(Date.now() - 60_000) } });

      const report = await reconcile.reconcileOnce();
      expect(report.failedPastDeadline).toEqual(expect.arrayContaining([midPause.sandboxId, midResume.sandboxId, notPaused.sandboxId]));
      expect(await stateOf(midPause.sandboxId)).toBe(SandboxState.Paused);
      expect(await sandboxes.pauseOf(midPause.sandboxId)).toMatchObject({ reported: false });
      expect(await stateOf(midResume.sandboxId)).toBe(SandboxState.Running);
      expect(await stateOf(notPaused.sandboxId)).toBe(SandboxState.Running);
      for (const id of [midPause.sandboxId, midResume.sandboxId, notPaused.sandboxId]) {
        expect(hostA.destroyed.includes(id) || hostB.destroyed.includes(id)).toBe(false);
      }
      // The paused one resumes normally afterwards.
      expect((await connect(midPause.sandboxId, 30)).resumed).toBe(true);
    });

    it('killing a paused sandbox destroys it on its host (its artifacts) and forgets the pause record', async () => {
      const sandbox = await create();
      const host = sandbox.hostId === 'host-a' ? hostA : hostB;
      await pause(sandbox.sandboxId);
      expect((await client.request(Subjects.sandboxKill, { teamId, sandboxId: sandbox.sandboxId }, 5_000)).killed).toBe(true);
      expect(host.destroyed).toContain(sandbox.sandboxId);
      expect(await sandboxes.pauseOf(sandbox.sandboxId)).toBeNull();
    });

    it('reconcile keeps a paused sandbox the host lists as paused, and fails one the host no longer has', async () => {
      const kept = await create();
      const lost = await create();
      await pause(kept.sandboxId);
      await pause(lost.sandboxId);
      const lostHost = lost.hostId === 'host-a' ? hostA : hostB;
      lostHost.paused.delete(lost.sandboxId);
      const reconcile = scheduler.get(ReconcileService);
      const report = await reconcile.reconcileOnce();
      expect(report.destroyedOrphans).not.toContain(kept.sandboxId);
      // Its host's exit event (the VMM stops with the pause) does not end it.
      await reconcile.onHostEvent({ kind: 'exited', sandboxId: kept.sandboxId, reason: 'VM exited', at: new Date().toISOString() }, { hostId: kept.hostId as string });
      expect(await stateOf(kept.sandboxId)).toBe(SandboxState.Paused);
      expect(report.markedGone).toContain(lost.sandboxId);
      expect(await stateOf(kept.sandboxId)).toBe(SandboxState.Paused);
      expect(await stateOf(lost.sandboxId)).toBe(SandboxState.Error);
    });

    it('paused sandboxes count against neither the team quota nor host usage; a resume must fit the quota again', async () => {
      const team = (await scheduler.get(TeamRepository).ensure(`quota-${db.name}`)).id;
      await scheduler.get(TeamRepository).setQuota(team, { maxConcurrentSandboxes: 1 });
      const first = await create({}, team);
      await expect(create({}, team)).rejects.toMatchObject({ code: ErrorCode.QuotaExceeded });
      const firstHost = first.hostId as string;
      const runningUsage = (await sandboxes.usageByHost()).get(firstHost);
      await client.request(Subjects.sandboxPause, { teamId: team, sandboxId: first.sandboxId }, 10_000);
      const pausedUsage = (await sandboxes.usageByHost()).get(firstHost);
      // The paused sandbox holds no vCPU, memory or slot on its host any more.
      expect({
        vcpus: (runningUsage?.vcpus ?? 0) - (pausedUsage?.vcpus ?? 0),
        memoryMib: (runningUsage?.memoryMib ?? 0) - (pausedUsage?.memoryMib ?? 0),
        sandboxes: (runningUsage?.sandboxes ?? 0) - (pausedUsage?.sandboxes ?? 0),
      }).toEqual({ vcpus: 1, memoryMib: 512, sandboxes: 1 });
      const second = await create({}, team);
      expect(second.state).toBe(SandboxState.Running);
      // Resuming the first would hold a second VM: over the quota, refused like a create, and it stays paused.
      await expect(client.request(Subjects.sandboxConnect, { teamId: team, sandboxId: first.sandboxId, timeoutSeconds: 30 }, 10_000)).rejects.toMatchObject({
        code: ErrorCode.QuotaExceeded,
      });
      expect(await stateOf(first.sandboxId)).toBe(SandboxState.Paused);
      await client.request(Subjects.sandboxKill, { teamId: team, sandboxId: second.sandboxId }, 5_000);
      expect((await client.request(Subjects.sandboxConnect, { teamId: team, sandboxId: first.sandboxId, timeoutSeconds: 30 }, 10_000)).resumed).toBe(true);
    });

    it('paused sandboxes count as disk: the disk quota counts them, and resuming one adds no disk', async () => {
      const team = (await scheduler.get(TeamRepository).ensure(`diskquota-${db.name}`)).id;
      const first = await create({}, team);
      const diskMib = (await prisma.sandbox.findUniqueOrThrow({ where: { id: first.sandboxId } })).diskMib;
      // Room for two sandboxes' disks, and vCPUs/memory for many.
      await scheduler.get(TeamRepository).setQuota(team, { maxConcurrentSandboxes: 10, maxDiskMib: 2 * diskMib });
      await client.request(Subjects.sandboxPause, { teamId: team, sandboxId: first.sandboxId }, 10_000);
      const second = await create({}, team);
      // The paused one still holds its disk: a third is over the disk quota, named as such.
      const refused = await create({}, team).catch((error: unknown) => error);
      expect(refused).toMatchObject({ code: ErrorCode.QuotaExceeded });
      expect((refused as Error).message).toMatch(/disk \(MiB\)/);
      // Its resume adds no disk (it already counts), so it fits.
      expect((await client.request(Subjects.sandboxConnect, { teamId: team, sandboxId: first.sandboxId, timeoutSeconds: 30 }, 10_000)).resumed).toBe(true);
      for (const sandboxId of [first.sandboxId, second.sandboxId]) await client.request(Subjects.sandboxKill, { teamId: team, sandboxId }, 5_000);
    });

    it('auto-resume for traffic: resumes a paused sandbox with autoResume and answers its route; refuses one without', async () => {
      const auto = await create({ autoPause: true, autoResume: true });
      await pause(auto.sandboxId);
      const pausedRoute = await client.request(Subjects.sandboxRoute, { sandboxId: auto.sandboxId }, 5_000);
      expect(pausedRoute).toMatchObject({ state: SandboxState.Paused, autoResume: true });
      const route = await client.request(Subjects.sandboxAutoResume, { sandboxId: auto.sandboxId }, 10_000);
      expect(route.state).toBe(SandboxState.Running);
      expect(await stateOf(auto.sandboxId)).toBe(SandboxState.Running);

      const manual = await create();
      await pause(manual.sandboxId);
      expect(await client.request(Subjects.sandboxRoute, { sandboxId: manual.sandboxId }, 5_000)).toMatchObject({ autoResume: false });
      await expect(client.request(Subjects.sandboxAutoResume, { sandboxId: manual.sandboxId }, 5_000)).rejects.toMatchObject({ code: ErrorCode.Conflict });

      // A disk-only pause is never resumed by traffic, even with autoResume.
      const diskOnly = await create({ autoResume: true });
      await pause(diskOnly.sandboxId, false);
      await expect(client.request(Subjects.sandboxAutoResume, { sandboxId: diskOnly.sandboxId }, 5_000)).rejects.toMatchObject({
        code: ErrorCode.Conflict,
        message: expect.stringContaining('without its memory'),
      });
    });
  });

  describe('fork', () => {
    it('starts count forks from one host call; each succeeds or fails on its own; the source keeps running', async () => {
      const source = await create({ metadata: { owner: 'fork-test' } });
      const host = source.hostId === 'host-a' ? hostA : hostB;
      host.failForkAt = new Set([1]);
      const reply = await client.request(Subjects.sandboxFork, { teamId, sandboxId: source.sandboxId, count: 3, timeoutSeconds: 60 }, 10_000);
      expect(reply.results).toHaveLength(3);
      expect(host.forkRequests.at(-1)?.sourceSandboxId).toBe(source.sandboxId);
      expect(host.forkRequests.at(-1)?.forks).toHaveLength(3);
      const [ok1, failed, ok2] = reply.results;
      expect('sandbox' in ok1 && 'sandbox' in ok2).toBe(true);
      // RESOURCE_EXHAUSTED is Kiln's 503 (no capacity), as for a create.
      expect(failed).toEqual({ error: { code: 503, message: expect.stringContaining('no slot for this fork') } });
      for (const result of [ok1, ok2]) {
        if (!('sandbox' in result)) throw new Error('expected a sandbox');
        const fork = result.sandbox;
        expect(fork.sandboxId).not.toBe(source.sandboxId);
        expect(fork).toMatchObject({ state: SandboxState.Running, templateId: 'base', hostId: source.hostId, metadata: { owner: 'fork-test' }, vcpus: 1, memoryMib: 512 });
        expect(fork.network.egress).toEqual(EGRESS);
        expect(fork.envdAccessToken).toBe(tokens.envdAccessToken(fork.sandboxId));
        expect(Date.parse(fork.expiresAt) - Date.now()).toBeGreaterThan(50_000);
      }
      const targets = host.forkRequests.at(-1)?.forks ?? [];
      expect(targets[0]).toMatchObject({ timeoutSeconds: 60, teamId, metadata: { owner: 'fork-test' }, egress: EGRESS });
      expect(targets[0].envdAccessToken).toBe(tokens.envdAccessToken(targets[0].sandboxId as string));
      expect(await stateOf(targets[1].sandboxId as string)).toBe(SandboxState.Error);
      expect(await stateOf(source.sandboxId)).toBe(SandboxState.Running);
    });

    it('checks each fork against the team quota on its own, and refuses to fork a paused sandbox', async () => {
      const team = (await scheduler.get(TeamRepository).ensure(`forkquota-${db.name}`)).id;
      await scheduler.get(TeamRepository).setQuota(team, { maxConcurrentSandboxes: 3 });
      const source = await create({}, team);
      const reply = await client.request(Subjects.sandboxFork, { teamId: team, sandboxId: source.sandboxId, count: 3 }, 10_000);
      const outcomes = reply.results.map((r) => ('sandbox' in r ? 'ok' : r.error.code));
      expect(outcomes).toEqual(['ok', 'ok', 429]);
      await client.request(Subjects.sandboxPause, { teamId: team, sandboxId: source.sandboxId }, 10_000);
      await expect(client.request(Subjects.sandboxFork, { teamId: team, sandboxId: source.sandboxId, count: 1 }, 10_000)).rejects.toMatchObject({
        code: ErrorCode.Conflict,
      });
    });
  });

  describe('named snapshots', () => {
    it('creates, lists, starts sandboxes from (on the snapshot host), outlives its source, and deletes a snapshot', async () => {
      const source = await create();
      const sourceHost = source.hostId === 'host-a' ? hostA : hostB;
      const otherHostId = source.hostId === 'host-a' ? 'host-b' : 'host-a';
      const named = await client.request(Subjects.snapshotCreate, { teamId, sandboxId: source.sandboxId, name: 'my-snap' }, 10_000);
      expect(named).toEqual({ snapshotID: 'my-snap:default', names: ['my-snap:default'] });
      const hostSnapshotId = sourceHost.snapshotRequests.at(-1)?.snapshotId as string;
      expect(hostSnapshotId).toMatch(/^[0-9a-f-]{36}$/);
      const unnamed = await client.request(Subjects.snapshotCreate, { teamId, sandboxId: source.sandboxId }, 10_000);
      expect(unnamed.snapshotID).toMatch(/^[a-z0-9]+:default$/);
      expect(unnamed.names).toEqual([]);

      // The source is killed: the snapshots stay.
      await client.request(Subjects.sandboxKill, { teamId, sandboxId: source.sandboxId }, 5_000);
      const all = await client.request(Subjects.snapshotList, { teamId }, 5_000);
      expect(all.snapshots).toEqual([unnamed, named]);
      const bySource = await client.request(Subjects.snapshotList, { teamId, sandboxId: source.sandboxId, limit: 1 }, 5_000);
      expect(bySource.snapshots).toEqual([unnamed]);
      expect(bySource.nextToken).toBeDefined();
      const next = await client.request(Subjects.snapshotList, { teamId, sandboxId: source.sandboxId, limit: 1, nextToken: bySource.nextToken }, 5_000);
      expect(next.snapshots).toEqual([named]);
      expect((await client.request(Subjects.snapshotList, { teamId, name: 'my-snap:default' }, 5_000)).snapshots).toEqual([named]);
      expect((await client.request(Subjects.snapshotList, { teamId: (await scheduler.get(TeamRepository).ensure(`other-${db.name}`)).id }, 5_000)).snapshots).toEqual([]);

      // Make the other host the one a plain create prefers: a sandbox from the snapshot must still go to the snapshot's host.
      await registerHosts(otherHostId === 'host-a' ? 'a' : 'b');
      const fromSnapshot = await create({ templateRef: named.snapshotID });
      expect(fromSnapshot.hostId).toBe(source.hostId);
      expect(sourceHost.createRequests.at(-1)).toMatchObject({ sandboxId: fromSnapshot.sandboxId, snapshotId: hostSnapshotId, templateId: 'base', buildId: 'fake-build' });
      const plain = await create();
      expect(plain.hostId).toBe(otherHostId);
      await registerHosts('a');

      // Delete (what the SDK's deleteSnapshot sends: DELETE /templates/{snapshotID}).
      expect(await client.request(Subjects.snapshotDelete, { teamId, ref: named.snapshotID }, 10_000)).toEqual({ wasSnapshot: true });
      expect(sourceHost.deletedSnapshots).toContain(hostSnapshotId);
      expect((await client.request(Subjects.snapshotList, { teamId }, 5_000)).snapshots).toEqual([unnamed]);
      await expect(client.request(Subjects.snapshotDelete, { teamId, ref: named.snapshotID }, 10_000)).rejects.toMatchObject({ code: ErrorCode.NotFound });
      // A template that is not a snapshot is not deleted (not implemented).
      expect(await client.request(Subjects.snapshotDelete, { teamId, ref: 'base' }, 10_000)).toEqual({ wasSnapshot: false });
      await expect(create({ templateRef: named.snapshotID })).rejects.toMatchObject({ code: ErrorCode.NotFound });
    });

    it("refuses a name another team's template holds, and snapshotting a sandbox that is not running", async () => {
      const source = await create();
      await expect(client.request(Subjects.snapshotCreate, { teamId, sandboxId: source.sandboxId, name: 'base' }, 10_000)).rejects.toMatchObject({
        code: ErrorCode.Conflict,
      });
      await pause(source.sandboxId);
      await expect(client.request(Subjects.snapshotCreate, { teamId, sandboxId: source.sandboxId }, 10_000)).rejects.toMatchObject({ code: ErrorCode.Conflict });
    });
  });
});
