import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import { INestApplicationContext } from '@nestjs/common';
import { HostMonitorEnv, loadConfig } from '@kiln/config';
import { PrismaService } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import { MessagingClient, MessagingModule, hostHeartbeatSubject, natsServerOptions } from '@kiln/messaging';
import { TelemetryModule } from '@kiln/telemetry';
import { PrivateServer, startPrivateNats } from '@kiln/testing';
import { AppModule } from '../src/app.module';
import { HostLivenessService } from '../src/host-health/host-liveness.service';

/** A host agent's heartbeat travels over real NATS to the host monitor, which also turns silence into `unhealthy`. */
describe('host-monitor heartbeats (real NATS, Postgres)', () => {
  let db: TestDatabase;
  let monitor: NestFastifyApplication;
  let agent: INestApplicationContext;
  let nats: PrivateServer;
  const hostId = `hm-${process.pid}`;

  beforeAll(async () => {
    [db, nats] = await Promise.all([createTestDatabase(), startPrivateNats()]);
    const env = loadConfig(HostMonitorEnv, { NATS_URL: nats.url, DATABASE_URL: db.url, LOG_LEVEL: 'silent', HOST_HEARTBEAT_TTL_SECONDS: '1' });
    monitor = await NestFactory.create<NestFastifyApplication>(AppModule.forRoot(env), new FastifyAdapter(), { logger: false });
    monitor.connectMicroservice(natsServerOptions(env.NATS_URL, `host-monitor-${process.pid}`));
    await monitor.init();
    await monitor.startAllMicroservices();
    await monitor.listen(0, '127.0.0.1');
    const moduleRef = await Test.createTestingModule({
      imports: [TelemetryModule.forRoot({ service: 'fake-agent', logLevel: 'silent' }), MessagingModule.forRoot({ natsUrl: env.NATS_URL, name: 'test-agent' })],
    }).compile();
    agent = await moduleRef.init();
  }, 60_000);

  afterAll(async () => {
    await agent?.close();
    await monitor?.close();
    await db?.drop();
    await nats?.stop();
  });

  it('records heartbeats and exposes them as metrics', async () => {
    const messaging = agent.get(MessagingClient);
    const heartbeat = {
      hostId,
      at: new Date().toISOString(),
      capacity: { vcpus: 8, memoryMib: 8192, sandboxes: 8 },
      usage: { vcpus: 2, memoryMib: 1024, sandboxes: 2 },
      templates: ['base'],
      readyCloneTemplates: ['base'],
      sandboxIds: ['a', 'b'],
    };
    await messaging.emit(hostHeartbeatSubject(hostId), heartbeat);
    const liveness = monitor.get(HostLivenessService);
    for (let i = 0; i < 50 && liveness.lastSeenAt(hostId) === undefined; i++) await new Promise((r) => setTimeout(r, 50));
    expect(liveness.lastSeenAt(hostId)).toBeDefined();
    const metrics = await (await fetch(`${await monitor.getUrl()}/metrics`)).text();
    expect(metrics).toContain(`kiln_host_sandboxes{host="${hostId}",service="host-monitor"} 2`);
  });

  it("ignores a heartbeat about one host sent on another host's subject (only the subject's host id is vouched for)", async () => {
    const messaging = agent.get(MessagingClient);
    const liveness = monitor.get(HostLivenessService);
    const forgedFor = `${hostId}-victim`;
    const beat = (about: string) => ({
      hostId: about,
      at: new Date().toISOString(),
      capacity: { vcpus: 1, memoryMib: 1, sandboxes: 1 },
      usage: { vcpus: 0, memoryMib: 0, sandboxes: 0 },
      templates: [],
      readyCloneTemplates: [],
      sandboxIds: [],
    });
    // The forged one first, then a genuine one of the sender: once that arrives, the forged one was handled too.
    await messaging.emit(hostHeartbeatSubject(`${hostId}-sender`), beat(forgedFor));
    await messaging.emit(hostHeartbeatSubject(`${hostId}-sender`), beat(`${hostId}-sender`));
    for (let i = 0; i < 50 && liveness.lastSeenAt(`${hostId}-sender`) === undefined; i++) await new Promise((r) => setTimeout(r, 50));
    expect(liveness.lastSeenAt(`${hostId}-sender`)).toBeDefined();
    expect(liveness.lastSeenAt(forgedFor)).toBeUndefined();
  });

  it('marks a registered host unhealthy once its heartbeats stop', async () => {
    const prisma = monitor.get(PrismaService);
    await prisma.host.create({
      data: {
        id: `${hostId}-silent`,
        address: '127.0.0.1:1',
        proxyUrl: 'http://127.0.0.1:1',
        state: 'ready',
        vcpuCapacity: 1,
        memoryMibCapacity: 1,
        sandboxCapacity: 1,
        lastHeartbeatAt: new Date(Date.now() - 5_000),
      },
    });
    const stale = await monitor.get(HostLivenessService).sweep();
    expect(stale).toContain(`${hostId}-silent`);
    expect((await prisma.host.findUniqueOrThrow({ where: { id: `${hostId}-silent` } })).state).toBe('unhealthy');
  });
});
