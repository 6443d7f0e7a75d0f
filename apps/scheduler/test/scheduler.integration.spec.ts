import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import { INestApplicationContext } from '@nestjs/common';
import { DEFAULT_NETWORK_SETTINGS, ErrorCode, KilnError, SandboxState } from '@kiln/contracts';
import { SchedulerEnv, loadConfig } from '@kiln/config';
import { PrismaService, SandboxRepository, TeamRepository, TemplateRepository } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import { MessagingClient, MessagingModule, Subjects, natsServerOptions } from '@kiln/messaging';
import { TelemetryModule } from '@kiln/telemetry';
import { PrivateServer, freePort, startPrivateNats, startPrivateRedis } from '@kiln/testing';
import { AppModule } from '../src/app.module';
import { PlacementService } from '../src/placement/placement.service';
import { SandboxTokens } from '../src/lifecycle/sandbox-tokens';
import { registerTestHost, removeTestHost, setTestHostState } from './support/fleet-hosts';

/** Real scheduler (in-process) on real Postgres, Redis and NATS; a separate Nest context plays the gateway. */
describe('scheduler over NATS (real Postgres, Redis, NATS)', () => {
  let db: TestDatabase;
  let scheduler: NestFastifyApplication;
  let caller: INestApplicationContext;
  let client: MessagingClient;
  let teamId: string;
  let otherTeamId: string;
  let nats: PrivateServer;
  let redis: PrivateServer;

  beforeAll(async () => {
    [db, nats, redis] = await Promise.all([createTestDatabase(), startPrivateNats(), startPrivateRedis()]);
    const env = loadConfig(SchedulerEnv, {
      DATABASE_URL: db.url,
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      KILN_SANDBOX_TOKEN_KEY: 'scheduler-integration-sandbox-token-key',
      LOG_LEVEL: 'silent',
      HTTP_PORT: String(await freePort()),
    });
    scheduler = await NestFactory.create<NestFastifyApplication>(AppModule.forRoot(env), new FastifyAdapter(), { logger: false });
    scheduler.connectMicroservice(natsServerOptions(env.NATS_URL, 'scheduler'));
    await scheduler.startAllMicroservices();
    await scheduler.listen(0, '127.0.0.1');

    const moduleRef = await Test.createTestingModule({
      imports: [TelemetryModule.forRoot({ service: 'test-caller', logLevel: 'silent' }), MessagingModule.forRoot({ natsUrl: env.NATS_URL, name: 'test-caller' })],
    }).compile();
    caller = await moduleRef.init();
    client = caller.get(MessagingClient);

    const teams = scheduler.get(TeamRepository);
    teamId = (await teams.ensure(`team-a-${db.name}`)).id;
    otherTeamId = (await teams.ensure(`team-b-${db.name}`)).id;
  }, 60_000);

  afterAll(async () => {
    await caller?.close();
    await scheduler?.close();
    await db?.drop();
    await nats?.stop();
    await redis?.stop();
  });

  async function insertRunningSandbox(id: string, timeoutSeconds = 300, extra: { allowPublicTraffic?: boolean; maskRequestHost?: string } = {}): Promise<void> {
    await scheduler.get(PrismaService).sandbox.create({
      data: {
        ...extra,
        id,
        teamId,
        templateId: 'base',
        state: SandboxState.Running,
        vcpus: 1,
        memoryMib: 512,
        diskMib: 2048,
        timeoutSeconds,
        // A running row has its start time: it is set with the move to running, and lists only show started rows.
        startedAt: new Date(),
        expiresAt: new Date(Date.now() + timeoutSeconds * 1000),
        metadata: { purpose: 'test' },
      },
    });
  }

  it('answers a ping: NATS request/reply between two apps', async () => {
    const reply = await client.request(Subjects.schedulerPing, {}, 5_000);
    expect(reply.service).toBe('scheduler');
    expect(Date.parse(reply.at)).not.toBeNaN();
  });

  it('carries typed errors across NATS: unknown sandbox is not_found', async () => {
    const failure = client.request(Subjects.sandboxGet, { teamId, sandboxId: 'doesnotexist' }, 5_000);
    await expect(failure).rejects.toBeInstanceOf(KilnError);
    await expect(failure).rejects.toMatchObject({ code: ErrorCode.NotFound });
  });

  it('places on a host with a clone of the template waiting first, then one that caches it, then the least loaded', async () => {
    const prisma = scheduler.get(PrismaService);
    const placement = scheduler.get(PlacementService);
    const hosts = { empty: 'place-empty', cached: 'place-cached', ready: 'place-ready' };
    const record = (hostId: string, templates: string[], readyCloneTemplates: string[]) => ({
      hostId,
      address: '127.0.0.1:1',
      proxyUrl: 'http://127.0.0.1:1',
      acceleration: 'tcg',
      version: 'test',
      vcpus: 4,
      memoryMib: 4096,
      sandboxes: 4,
      templates,
      readyCloneTemplates,
    });
    const request = (templateId: string) => ({ templateId, vcpus: 1, memoryMib: 512, diskMib: 2048 });
    const order = (templateId = 'base') => placement.candidates(request(templateId)).map((c) => c.hostId);
    try {
      // Host ids sort the other way round, so only the template and clone readiness can produce this order.
      await registerTestHost(scheduler, record(hosts.empty, [], []));
      await registerTestHost(scheduler, record(hosts.cached, ['base'], []), { usage: { memoryMib: 1024, vcpus: 1, sandboxes: 1 } });
      await registerTestHost(scheduler, record(hosts.ready, ['base'], ['base']), { usage: { memoryMib: 2048, vcpus: 2, sandboxes: 2 } });
      expect(order()).toEqual([hosts.ready, hosts.cached, hosts.empty]);
      // No locality for another template: the least loaded first.
      expect(order('other')).toEqual([hosts.empty, hosts.cached, hosts.ready]);

      // Readiness follows the monitor's KV entries: the ready host's pool ran dry and the other refilled.
      await registerTestHost(scheduler, record(hosts.ready, ['base'], []), { usage: { memoryMib: 2048, vcpus: 2, sandboxes: 2 } });
      await registerTestHost(scheduler, record(hosts.cached, ['base'], ['base']), { usage: { memoryMib: 1024, vcpus: 1, sandboxes: 1 } });
      expect(order()).toEqual([hosts.cached, hosts.ready, hosts.empty]);

      // Draining, cordoned, unhealthy and dead hosts get nothing new; a removed one is gone from the view.
      await setTestHostState(scheduler, hosts.cached, 'draining');
      await setTestHostState(scheduler, hosts.ready, 'unhealthy');
      expect(order()).toEqual([hosts.empty]);
      await removeTestHost(scheduler, hosts.empty);
      expect(order()).toEqual([]);
    } finally {
      // Leave no placeable host behind for the capacity test below.
      for (const hostId of Object.values(hosts)) await removeTestHost(scheduler, hostId);
      await prisma.host.deleteMany({ where: { id: { in: Object.values(hosts) } } });
    }
  });

  it('refuses a template with no ready build before placing anything', async () => {
    await scheduler.get(PrismaService).template.upsert({ where: { id: 'unbuilt' }, update: {}, create: { id: 'unbuilt', public: true } });
    const failure = client.request(
      Subjects.sandboxCreate,
      { teamId, templateRef: 'unbuilt', timeoutSeconds: 30, autoPause: false, network: DEFAULT_NETWORK_SETTINGS, metadata: {}, envVars: {} },
      10_000,
    );
    await expect(failure).rejects.toMatchObject({ code: ErrorCode.FailedPrecondition, message: "template 'unbuilt' has no ready build" });
    expect(await scheduler.get(PrismaService).sandbox.count({ where: { templateId: 'unbuilt' } })).toBe(0);
  });

  it('answers 503-style resource_exhausted when no host has room, leaving nothing pending', async () => {
    await scheduler
      .get(TemplateRepository)
      .ensurePublicTemplate({ templateId: 'base', alias: 'base', vcpus: 1, memoryMib: 512, diskMib: 2048, envdVersion: '0.5.7', contentHash: 'integration' });
    const failure = client.request(
      Subjects.sandboxCreate,
      { teamId, templateRef: 'base', timeoutSeconds: 30, autoPause: false, network: DEFAULT_NETWORK_SETTINGS, metadata: {}, envVars: {} },
      10_000,
    );
    await expect(failure).rejects.toMatchObject({ code: ErrorCode.ResourceExhausted, retryAfterSeconds: expect.any(Number) });
    const pending = await scheduler.get(PrismaService).sandbox.count({ where: { teamId, state: SandboxState.Pending } });
    expect(pending).toBe(0);
  });

  it('gives every sandbox an envd token derived from the deployment key, and a traffic token only when its ports are private', async () => {
    const tokens = new SandboxTokens({ KILN_SANDBOX_TOKEN_KEY: 'scheduler-integration-sandbox-token-key' } as SchedulerEnv);
    await insertRunningSandbox('tokenpublic1');
    await insertRunningSandbox('tokenprivate1', 300, { allowPublicTraffic: false, maskRequestHost: 'localhost:${PORT}' });
    const publicView = await client.request(Subjects.sandboxGet, { teamId, sandboxId: 'tokenpublic1' }, 5_000);
    const privateView = await client.request(Subjects.sandboxGet, { teamId, sandboxId: 'tokenprivate1' }, 5_000);
    expect(publicView.envdAccessToken).toBe(tokens.envdAccessToken('tokenpublic1'));
    expect(publicView.trafficAccessToken).toBeUndefined();
    expect(privateView.envdAccessToken).toBe(tokens.envdAccessToken('tokenprivate1'));
    expect(privateView.envdAccessToken).not.toBe(publicView.envdAccessToken);
    expect(privateView.trafficAccessToken).toBe(tokens.trafficAccessToken('tokenprivate1'));
    expect(privateView.trafficAccessToken).not.toBe(privateView.envdAccessToken);
    expect(privateView.network).toEqual({ egress: { allowOut: [], denyOut: [] }, allowInternetAccess: null, allowPublicTraffic: false, maskRequestHost: 'localhost:${PORT}' });
    // Nothing token-like is stored with the sandbox.
    const row = await scheduler.get(PrismaService).sandbox.findUniqueOrThrow({ where: { id: 'tokenprivate1' } });
    expect(JSON.stringify(row)).not.toContain(privateView.envdAccessToken);
  });

  it('hides another team’s sandbox as not_found', async () => {
    await insertRunningSandbox('teamscoped1');
    await expect(client.request(Subjects.sandboxGet, { teamId: otherTeamId, sandboxId: 'teamscoped1' }, 5_000)).rejects.toMatchObject({
      code: ErrorCode.NotFound,
    });
    const view = await client.request(Subjects.sandboxGet, { teamId, sandboxId: 'teamscoped1' }, 5_000);
    expect(view).toMatchObject({ sandboxId: 'teamscoped1', state: SandboxState.Running, metadata: { purpose: 'test' } });
  });

  it('lets exactly one of two concurrent kills win, with no error state', async () => {
    await insertRunningSandbox('killrace1');
    const replies = await Promise.all([
      client.request(Subjects.sandboxKill, { teamId, sandboxId: 'killrace1' }, 5_000),
      client.request(Subjects.sandboxKill, { teamId, sandboxId: 'killrace1' }, 5_000),
    ]);
    expect(replies.map((r) => r.killed).sort()).toEqual([false, true]);
    const events = await scheduler.get(SandboxRepository).events('killrace1');
    expect(events.map((e) => e.toState)).toEqual([SandboxState.Killed]);
    const row = await scheduler.get(SandboxRepository).find('killrace1');
    expect(row?.state).toBe(SandboxState.Killed);
  });

  it('expires a sandbox through its BullMQ timeout job, and a refresh postpones it', async () => {
    await insertRunningSandbox('expiring1', 2);
    await insertRunningSandbox('refreshed1', 2);
    await client.request(Subjects.sandboxSetTimeout, { teamId, sandboxId: 'expiring1', timeoutSeconds: 1 }, 5_000);
    await client.request(Subjects.sandboxSetTimeout, { teamId, sandboxId: 'refreshed1', timeoutSeconds: 1 }, 5_000);
    await client.request(Subjects.sandboxRefresh, { teamId, sandboxId: 'refreshed1', durationSeconds: 30 }, 5_000);
    const repo = scheduler.get(SandboxRepository);
    const deadline = Date.now() + 10_000;
    while ((await repo.find('expiring1'))?.state !== SandboxState.Killed && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(await repo.find('expiring1')).toMatchObject({ state: SandboxState.Killed, stateReason: 'timeout' });
    expect(await repo.find('refreshed1')).toMatchObject({ state: SandboxState.Running });
  }, 20_000);

  it('lists with metadata filters and pages with nextToken', async () => {
    for (const id of ['listpage1', 'listpage2', 'listpage3']) await insertRunningSandbox(id);
    const all: string[] = [];
    let nextToken: string | undefined;
    do {
      const page = await client.request(Subjects.sandboxList, { teamId, metadata: { purpose: 'test' }, limit: 2, nextToken }, 5_000);
      expect(page.sandboxes.length).toBeLessThanOrEqual(2);
      all.push(...page.sandboxes.map((s) => s.sandboxId));
      nextToken = page.nextToken;
    } while (nextToken);
    expect(all).toEqual(expect.arrayContaining(['listpage1', 'listpage2', 'listpage3']));
    expect(new Set(all).size).toBe(all.length);
    const none = await client.request(Subjects.sandboxList, { teamId, metadata: { purpose: 'other' }, limit: 10 }, 5_000);
    expect(none.sandboxes).toEqual([]);
  });
});
