import { INestApplicationContext } from '@nestjs/common';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { NatsConnection, connect } from 'nats';
import { ErrorCode } from '@kiln/contracts';
import { HostMonitorEnv, loadConfig } from '@kiln/config';
import { HostRepository } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import {
  HostEventStream,
  HostStateEvent,
  MessagingClient,
  MonitorSubjects,
  NatsConnectionHolder,
  NatsUser,
  generateKilnNatsUsers,
  hostAgentNatsUser,
  hostHeartbeatSubject,
  hostRegisterSubject,
  mintJoinToken,
  natsAuthOptions,
  natsCredentialsEnv,
  renderNatsServerConfig,
} from '@kiln/messaging';
import { PrivateServer, eventually, startPrivateNats } from '@kiln/testing';
import { heartbeatOf, kvView, registrationOf, startCaller, startMonitor, untilMonitorAnswers } from './support/monitor-app';

const JOIN_TOKEN_KEY = 'host-monitor-authorisation-join-token-key-0123456789';

/**
 * The host monitor on a NATS server that admits Kiln's users only (the generated config): its own grant is enough for
 * everything it does (KV bucket, event stream, admin replies), and what a host says counts only for the host its
 * subject names (vouched for by the NATS permissions).
 */
describe('host monitor behind authenticated NATS: hosts speak only for themselves', () => {
  const hostA = 'auth-host-a';
  // A host id with a dot that extends A's: A's grant must not cover it.
  const hostB = 'auth-host-a.b';
  let users: NatsUser[];
  let db: TestDatabase;
  let nats: PrivateServer;
  let monitor: NestFastifyApplication;
  const callers: INestApplicationContext[] = [];
  let schedulerNc: NatsConnection;

  const callerAs = async (user: string) => {
    const { NATS_USER, NATS_PASSWORD } = natsCredentialsEnv(users, user);
    const caller = await startCaller(nats.url, { user: NATS_USER, password: NATS_PASSWORD });
    callers.push(caller);
    return caller;
  };
  const token = (hostId: string) => mintJoinToken(JOIN_TOKEN_KEY, hostId, 600).token;

  beforeAll(async () => {
    users = generateKilnNatsUsers([hostA, hostB]);
    [db, nats] = await Promise.all([
      createTestDatabase(),
      startPrivateNats({ config: ({ port, storeDir }) => renderNatsServerConfig({ port, storeDir, users }) }),
    ]);
    const env = loadConfig(HostMonitorEnv, {
      DATABASE_URL: db.url,
      NATS_URL: nats.url,
      ...natsCredentialsEnv(users, 'host-monitor'),
      HOST_JOIN_TOKEN_KEY: JOIN_TOKEN_KEY,
      HOST_VIEW_FLUSH_MS: '100',
      LOG_LEVEL: 'silent',
    });
    monitor = await startMonitor(env);
    await untilMonitorAnswers((await callerAs('gateway')).get(MessagingClient));
    const scheduler = natsCredentialsEnv(users, 'scheduler');
    schedulerNc = await connect({ servers: nats.url, ...natsAuthOptions({ user: scheduler.NATS_USER, password: scheduler.NATS_PASSWORD }) });
  }, 60_000);

  afterAll(async () => {
    await schedulerNc?.close();
    for (const caller of callers) await caller.close();
    await monitor?.close();
    await db?.drop();
    await nats?.stop();
  }, 60_000);

  it('registers a host with its join token, then with its credential, on its own subject; never as another host', async () => {
    const a = (await callerAs(hostAgentNatsUser(hostA))).get(MessagingClient);
    const b = (await callerAs(hostAgentNatsUser(hostB))).get(MessagingClient);
    // No token, no credential: refused. With B's token: registered, with a credential. Then with the credential.
    await expect(b.request(hostRegisterSubject(hostB), registrationOf(hostB), 5_000)).rejects.toMatchObject({ code: ErrorCode.Unauthenticated });
    const joined = await b.request(hostRegisterSubject(hostB), { ...registrationOf(hostB), token: token(hostB) }, 5_000);
    expect(joined).toMatchObject({ accepted: true, hostCredential: expect.any(String) });
    await expect(b.request(hostRegisterSubject(hostB), { ...registrationOf(hostB), credential: joined.hostCredential }, 5_000)).resolves.toMatchObject({ accepted: true });

    // Host A, on its own subject, claiming to be B (with a token for B, even): refused, B's row untouched.
    await expect(
      a.request(hostRegisterSubject(hostA), { ...registrationOf(hostB), token: token(hostB), grpcAddress: '127.0.0.1:6666' }, 5_000),
    ).rejects.toMatchObject({ code: ErrorCode.PermissionDenied });
    // On B's subject it cannot even send it (NATS refuses the publish, so no one answers).
    await expect(a.request(hostRegisterSubject(hostB), { ...registrationOf(hostB), token: token(hostB), grpcAddress: '127.0.0.1:6666' }, 2_000)).rejects.toBeDefined();
    // And A's own token, for A, on A's subject, naming B in the payload: refused like any registration about another host.
    await expect(a.request(hostRegisterSubject(hostA), { ...registrationOf(hostB), token: token(hostA) }, 5_000)).rejects.toMatchObject({ code: ErrorCode.PermissionDenied });
    expect((await monitor.get(HostRepository).get(hostB))?.address).toBe('127.0.0.1:50051');
    // What the scheduler's user sees: B's view in the KV bucket.
    expect(await kvView(schedulerNc, hostB)).toMatchObject({ hostId: hostB, state: 'ready' });
  });

  it("ignores a heartbeat about host B sent by host A, and applies B's own", async () => {
    const a = (await callerAs(hostAgentNatsUser(hostA))).get(MessagingClient);
    const b = (await callerAs(hostAgentNatsUser(hostB))).get(MessagingClient);
    await b.emit(hostHeartbeatSubject(hostB), heartbeatOf(hostB, 1));
    await eventually("B's heartbeat in KV", async () => (await kvView(schedulerNc, hostB))?.usage.sandboxes === 1 || undefined);

    // Forged (on A's own subject, the only one A may publish on), then B's genuine one: delivered in that order.
    await a.emit(hostHeartbeatSubject(hostA), heartbeatOf(hostB, 7) as never);
    await b.emit(hostHeartbeatSubject(hostB), heartbeatOf(hostB, 2));
    await eventually("B's second heartbeat in KV", async () => (await kvView(schedulerNc, hostB))?.usage.sandboxes === 2 || undefined);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect((await kvView(schedulerNc, hostB))?.usage.sandboxes).toBe(2);
  });

  it("answers the gateway's admin requests, and its events reach the scheduler's durable consumer", async () => {
    const gateway = (await callerAs('gateway')).get(MessagingClient);
    const schedulerHolder = new NatsConnectionHolder();
    const scheduler = natsCredentialsEnv(users, 'scheduler');
    await schedulerHolder.open(nats.url, 'scheduler-consumer', { user: scheduler.NATS_USER, password: scheduler.NATS_PASSWORD });
    const seen: HostStateEvent[] = [];
    const stop = await new HostEventStream(schedulerHolder).consume(`auth-test-${process.pid}`, async (event) => {
      seen.push(event);
    });
    try {
      const minted = await gateway.request(MonitorSubjects.joinTokenCreate, { hostId: hostA }, 5_000);
      const a = (await callerAs(hostAgentNatsUser(hostA))).get(MessagingClient);
      await expect(a.request(hostRegisterSubject(hostA), { ...registrationOf(hostA), token: minted.token }, 5_000)).resolves.toMatchObject({ accepted: true });
      expect((await gateway.request(MonitorSubjects.nodesList, {}, 5_000)).nodes.map((node) => node.hostId).sort()).toEqual([hostA, hostB].sort());
      await expect(gateway.request(MonitorSubjects.nodesSetStatus, { hostId: hostA, adminState: 'draining' }, 5_000)).resolves.toMatchObject({ state: 'draining' });
      await eventually('the events, acked by the scheduler', () => seen.some((e) => e.hostId === hostA && e.to === 'draining') || undefined);
      expect(seen.filter((e) => e.hostId === hostA).map((e) => [e.kind, e.to])).toEqual([
        ['registered', 'ready'],
        ['state-changed', 'draining'],
      ]);
      // A host may not ask the monitor's admin subjects.
      const agent = (await callerAs(hostAgentNatsUser(hostA))).get(MessagingClient);
      await expect(agent.request(MonitorSubjects.nodesRemove, { hostId: hostB }, 2_000)).rejects.toBeDefined();
      expect(await kvView(schedulerNc, hostB)).toBeDefined();
    } finally {
      await stop();
      await schedulerHolder.onApplicationShutdown();
    }
  });
});
