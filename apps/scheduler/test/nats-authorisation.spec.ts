import 'reflect-metadata';
import { INestApplicationContext } from '@nestjs/common';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { ErrorCode, SandboxState } from '@kiln/contracts';
import { SchedulerEnv, loadConfig } from '@kiln/config';
import { HostRepository, PrismaService, TeamRepository, TemplateRepository } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import {
  HostHeartbeat,
  MessagingClient,
  NatsUser,
  SandboxEventStream,
  generateKilnNatsUsers,
  hostAgentNatsUser,
  hostHeartbeatSubject,
  hostRegisterSubject,
  natsCredentialsEnv,
  renderNatsServerConfig,
} from '@kiln/messaging';
import { PrivateServer, eventually, freePort, startPrivateNats, startPrivateRedis } from '@kiln/testing';
import { startCaller, startScheduler } from './support/scheduler-app';

const TOKEN = 'nats-authorisation-registration-token';

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

  const capacity = { vcpus: 8, memoryMib: 8192, sandboxes: 8 };
  const registration = (hostId: string) => ({
    hostId,
    grpcAddress: '127.0.0.1:1',
    proxyUrl: 'http://127.0.0.1:1',
    acceleration: 'tcg' as const,
    version: 'test',
    capacity,
    templates: ['base'],
    readyCloneTemplates: [],
  });
  const heartbeat = (hostId: string, vcpusUsed: number): HostHeartbeat => ({
    hostId,
    at: new Date().toISOString(),
    capacity,
    usage: { vcpus: vcpusUsed, memoryMib: 0, sandboxes: 0 },
    templates: ['base'],
    readyCloneTemplates: [],
    sandboxIds: [],
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
      HOST_REGISTRATION_TOKEN: TOKEN,
      KILN_SANDBOX_TOKEN_KEY: 'nats-authorisation-sandbox-token-key-0123456789',
      LOG_LEVEL: 'silent',
      HTTP_PORT: String(await freePort()),
      RECONCILE_INTERVAL_SECONDS: '3600',
      HOST_HEARTBEAT_TTL_SECONDS: '3600',
    });
    scheduler = await startScheduler(env);
    [agentA, agentB] = await Promise.all([agentAs(hostA), agentAs(hostB)]);
    teamId = (await scheduler.get(TeamRepository).ensure(`natsauth-${db.name}`)).id;
    await scheduler
      .get(TemplateRepository)
      .ensurePublicTemplate({ templateId: 'base', alias: 'base', vcpus: 1, memoryMib: 512, diskMib: 2048, envdVersion: '0.5.7', contentHash: 'nats-auth' });
  }, 60_000);

  afterAll(async () => {
    await agentA?.close();
    await agentB?.close();
    await scheduler?.close();
    await db?.drop();
    await nats?.stop();
    await redis?.stop();
  }, 60_000);

  it('registers a host once with the token, then without it on its own subject; never as another host', async () => {
    const b = agentB.get(MessagingClient);
    // Unknown host, no token: refused. With the token: registered. Then a re-registration without it: accepted.
    await expect(b.request(hostRegisterSubject(hostB), registration(hostB), 5_000)).rejects.toMatchObject({ code: ErrorCode.Unauthenticated });
    await expect(b.request(hostRegisterSubject(hostB), { ...registration(hostB), token: TOKEN }, 5_000)).resolves.toMatchObject({ accepted: true });
    await expect(b.request(hostRegisterSubject(hostB), registration(hostB), 5_000)).resolves.toMatchObject({ accepted: true });

    // Host A, on its own subject, claiming to be B (even with the token): refused, B's row untouched.
    const a = agentA.get(MessagingClient);
    await expect(
      a.request(hostRegisterSubject(hostA), { ...registration(hostB), token: TOKEN, grpcAddress: '127.0.0.1:6666' }, 5_000),
    ).rejects.toMatchObject({ code: ErrorCode.PermissionDenied });
    // On B's subject it cannot even send it (NATS refuses the publish, so no one answers).
    await expect(a.request(hostRegisterSubject(hostB), { ...registration(hostB), token: TOKEN, grpcAddress: '127.0.0.1:6666' }, 2_000)).rejects.toBeDefined();
    expect((await scheduler.get(HostRepository).get(hostB))?.address).toBe('127.0.0.1:1');
  });

  it("ignores a heartbeat about host B sent by host A, and applies B's own", async () => {
    const hosts = scheduler.get(HostRepository);
    const usedVcpus = async () => (await hosts.get(hostB))?.vcpuUsed;
    await agentB.get(MessagingClient).emit(hostHeartbeatSubject(hostB), heartbeat(hostB, 1));
    await eventually("B's heartbeat applied", async () => (await usedVcpus()) === 1 || undefined);

    // Forged (on A's own subject, the only one A may publish on), then B's genuine one: delivered in that order.
    await agentA.get(MessagingClient).emit(hostHeartbeatSubject(hostA), heartbeat(hostB, 7));
    await agentB.get(MessagingClient).emit(hostHeartbeatSubject(hostB), heartbeat(hostB, 2));
    await eventually("B's second heartbeat applied", async () => (await usedVcpus()) === 2 || undefined);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await usedVcpus()).toBe(2);
  });

  it("leaves host B's sandbox running when host A publishes a crash event for it, and applies B's own", async () => {
    const prisma = scheduler.get(PrismaService);
    const running = (id: string) => ({
      id,
      teamId,
      templateId: 'base',
      state: SandboxState.Running,
      hostId: hostB,
      vcpus: 1,
      memoryMib: 512,
      diskMib: 2048,
      timeoutSeconds: 300,
      expiresAt: new Date(Date.now() + 300_000),
      startedAt: new Date(),
    });
    await prisma.sandbox.createMany({ data: [running('forgedtarget1'), running('genuinecrash1')] });
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
