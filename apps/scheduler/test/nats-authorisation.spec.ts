import 'reflect-metadata';
import { INestApplicationContext } from '@nestjs/common';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { SandboxState } from '@kiln/contracts';
import { SchedulerEnv, loadConfig } from '@kiln/config';
import { HostRepository, PrismaService, TeamRepository, TemplateRepository } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import {
  HOST_LOST_REASON,
  HostEventStream,
  NatsConnectionHolder,
  NatsUser,
  SandboxEventStream,
  generateKilnNatsUsers,
  hostAgentNatsUser,
  natsCredentialsEnv,
  renderNatsServerConfig,
} from '@kiln/messaging';
import { PrivateServer, eventually, freePort, startPrivateNats, startPrivateRedis } from '@kiln/testing';
import { hostViewOf, putHostView, untilFleetViewsHold } from './support/fleet-hosts';
import { startCaller, startScheduler } from './support/scheduler-app';

/**
 * The scheduler on a NATS server that admits Kiln's users only (the generated config): what a host says about a
 * host or sandbox counts only when the subject's host id (vouched for by the NATS permissions) is that host.
 */
describe('scheduler behind authenticated NATS: hosts speak only for themselves', () => {
  const hostA = 'auth-host-a';
  const hostB = 'auth-host-b';
  let users: NatsUser[];
  let db: TestDatabase;
  let nats: PrivateServer;
  let redis: PrivateServer;
  let scheduler: NestFastifyApplication;
  let agentA: INestApplicationContext;
  let agentB: INestApplicationContext;
  let teamId: string;

  const hostRecord = (hostId: string) => ({
    hostId,
    address: '127.0.0.1:1',
    proxyUrl: 'http://127.0.0.1:1',
    acceleration: 'tcg',
    version: 'test',
    vcpus: 8,
    memoryMib: 8192,
    sandboxes: 8,
    templates: ['base'],
    readyCloneTemplates: [],
  });
  const running = (id: string, hostId: string) => ({
    id,
    teamId,
    templateId: 'base',
    state: SandboxState.Running,
    hostId,
    vcpus: 1,
    memoryMib: 512,
    diskMib: 2048,
    timeoutSeconds: 300,
    expiresAt: new Date(Date.now() + 300_000),
    startedAt: new Date(),
  });
  const agentAs = (hostId: string) => {
    const { NATS_USER, NATS_PASSWORD } = natsCredentialsEnv(users, hostAgentNatsUser(hostId));
    return startCaller(nats.url, { user: NATS_USER, password: NATS_PASSWORD });
  };

  beforeAll(async () => {
    users = generateKilnNatsUsers([hostA, hostB]);
    [db, nats, redis] = await Promise.all([
      createTestDatabase(),
      startPrivateNats({ config: ({ port, storeDir }) => renderNatsServerConfig({ port, storeDir, users }) }),
      startPrivateRedis(),
    ]);
    const env = loadConfig(SchedulerEnv, {
      DATABASE_URL: db.url,
      NATS_URL: nats.url,
      ...natsCredentialsEnv(users, 'scheduler'),
      REDIS_URL: redis.url,
      KILN_SANDBOX_TOKEN_KEY: 'nats-authorisation-sandbox-token-key-0123456789',
      LOG_LEVEL: 'silent',
      HTTP_PORT: String(await freePort()),
      RECONCILE_INTERVAL_SECONDS: '3600',
    });
    scheduler = await startScheduler(env);
    [agentA, agentB] = await Promise.all([agentAs(hostA), agentAs(hostB)]);
    teamId = (await scheduler.get(TeamRepository).ensure(`natsauth-${db.name}`)).id;
    await scheduler
      .get(TemplateRepository)
      .ensurePublicTemplate({ templateId: 'base', alias: 'base', vcpus: 1, memoryMib: 512, diskMib: 2048, envdVersion: '0.5.7', contentHash: 'nats-auth' });
    // The rows the host monitor would have written when the hosts joined (sandboxes refer to them).
    for (const hostId of [hostA, hostB]) await scheduler.get(HostRepository).register(hostRecord(hostId));
  }, 60_000);

  afterAll(async () => {
    await agentA?.close();
    await agentB?.close();
    await scheduler?.close();
    await db?.drop();
    await nats?.stop();
    await redis?.stop();
  }, 60_000);

  it("follows the host monitor's KV entries and handles its host state events, as the scheduler's NATS user", async () => {
    const credentials = natsCredentialsEnv(users, 'host-monitor');
    const monitor = await startCaller(nats.url, { user: credentials.NATS_USER, password: credentials.NATS_PASSWORD });
    try {
      const nc = monitor.get(NatsConnectionHolder).nc;
      const view = hostViewOf(hostRecord(hostA), { usage: { vcpus: 3 } });
      await putHostView(nc, view);
      await untilFleetViewsHold([scheduler], hostA, view);

      // A dead host's running sandbox ends host_lost: the scheduler's durable consumer read the event and acked it.
      await scheduler.get(PrismaService).sandbox.create({ data: running('lostwithhost1', hostA) });
      await new HostEventStream(monitor.get(NatsConnectionHolder)).publish({ kind: 'state-changed', hostId: hostA, from: 'unhealthy', to: 'dead', reason: 'silent', at: new Date().toISOString() });
      await eventually('the host_lost sandbox', async () => (await scheduler.get(PrismaService).sandbox.findUnique({ where: { id: 'lostwithhost1' } }))?.stateReason === HOST_LOST_REASON || undefined);
    } finally {
      await monitor.close();
    }
  });

  it("leaves host B's sandbox running when host A publishes a crash event for it, and applies B's own", async () => {
    const prisma = scheduler.get(PrismaService);
    await prisma.sandbox.createMany({ data: [running('forgedtarget1', hostB), running('genuinecrash1', hostB)] });
    const at = new Date().toISOString();

    // A forged crash for B's sandbox, on A's own subject (A's user may publish nothing else), then B's real crash of
    // its other sandbox: the scheduler's consumer takes them in order, so once the second is applied the first was seen.
    const forged = agentA.get(SandboxEventStream).publish({ kind: 'crashed', sandboxId: 'forgedtarget1', hostId: hostB, reason: 'forged', at }, { hostId: hostA });
    await expect(forged).resolves.toBeGreaterThan(0);
    await agentB.get(SandboxEventStream).publish({ kind: 'crashed', sandboxId: 'genuinecrash1', hostId: hostB, reason: 'VM died', at }, { hostId: hostB });

    await eventually("B's crash applied", async () => (await prisma.sandbox.findUnique({ where: { id: 'genuinecrash1' } }))?.state === SandboxState.Error || undefined);
    expect((await prisma.sandbox.findUniqueOrThrow({ where: { id: 'forgedtarget1' } })).state).toBe(SandboxState.Running);
  });
});
