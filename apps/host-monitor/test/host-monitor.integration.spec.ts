import { createHash } from 'node:crypto';
import { INestApplicationContext } from '@nestjs/common';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { NatsConnection, connect } from 'nats';
import { ErrorCode } from '@kiln/contracts';
import { HostMonitorEnv, loadConfig } from '@kiln/config';
import { PrismaService } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import {
  HOST_EVENTS_STREAM,
  MessagingClient,
  MonitorSubjects,
  hostHeartbeatSubject,
  hostRegisterSubject,
  mintJoinToken,
  sandboxEventSubject,
} from '@kiln/messaging';
import { PrivateServer, eventually, startPrivateNats } from '@kiln/testing';
import { FleetService } from '../src/fleet/fleet.service';
import { HostEventLog, heartbeatOf, kvView, registrationOf, startCaller, startMonitor, untilMonitorAnswers } from './support/monitor-app';

const JOIN_TOKEN_KEY = 'host-monitor-integration-join-token-key-0123456789';
const sha256 = (value: string) => createHash('sha256').update(value).digest('hex');

/**
 * The host monitor on real NATS (JetStream: the hosts KV bucket and the host events stream) and Postgres, with short
 * thresholds (heartbeat every 1 s, unhealthy after 2 s of silence, dead after 3 s).
 */
describe('host monitor (real NATS, JetStream, Postgres)', () => {
  let db: TestDatabase;
  let nats: PrivateServer;
  let env: HostMonitorEnv;
  let monitor: NestFastifyApplication;
  let agent: INestApplicationContext;
  let client: MessagingClient;
  let nc: NatsConnection;
  let events: HostEventLog;
  const prefix = `hm${process.pid}`;

  const register = (hostId: string, extra: Record<string, unknown>, subjectHostId = hostId) =>
    client.request(hostRegisterSubject(subjectHostId), { ...registrationOf(hostId), ...extra }, 5_000);
  const token = (hostId: string, ttlSeconds = 600) => mintJoinToken(JOIN_TOKEN_KEY, hostId, ttlSeconds).token;
  /** Registers `hostId` with a fresh join token; resolves with its credential. */
  const join = async (hostId: string) => (await register(hostId, { token: token(hostId) })).hostCredential!;
  const hostRow = (hostId: string) => monitor.get(PrismaService).host.findUnique({ where: { id: hostId } });

  beforeAll(async () => {
    [db, nats] = await Promise.all([createTestDatabase(), startPrivateNats()]);
    env = loadConfig(HostMonitorEnv, {
      NATS_URL: nats.url,
      DATABASE_URL: db.url,
      LOG_LEVEL: 'silent',
      HOST_JOIN_TOKEN_KEY: JOIN_TOKEN_KEY,
      HOST_HEARTBEAT_INTERVAL_SECONDS: '1',
      HOST_UNHEALTHY_AFTER_SECONDS: '2',
      HOST_DEAD_AFTER_SECONDS: '3',
      HOST_VIEW_FLUSH_MS: '100',
      HOST_JOIN_TOKEN_MAX_TTL_SECONDS: '7200',
    });
    monitor = await startMonitor(env);
    agent = await startCaller(nats.url);
    client = agent.get(MessagingClient);
    await untilMonitorAnswers(client);
    nc = await connect({ servers: nats.url });
    events = new HostEventLog(nc);
    await nc.flush();
  }, 60_000);

  afterAll(async () => {
    events?.close();
    await nc?.close();
    await agent?.close();
    await monitor?.close();
    await db?.drop();
    await nats?.stop();
  }, 60_000);

  it('exchanges a join token once for a host credential, stored only as its hash; the token cannot be used again', async () => {
    const hostId = `${prefix}-join`;
    const joinToken = token(hostId);
    const reply = await register(hostId, { token: joinToken });
    expect(reply).toMatchObject({ accepted: true, heartbeatIntervalSeconds: 1 });
    expect(reply.hostCredential).toMatch(/^[A-Za-z0-9_-]{43}$/);

    const row = await hostRow(hostId);
    expect(row).toMatchObject({ state: 'ready', adminState: 'ready', credentialHash: sha256(reply.hostCredential!), diskMibCapacity: 50_000 });
    expect(JSON.stringify(row)).not.toContain(reply.hostCredential!);
    expect(await kvView(nc, hostId)).toMatchObject({
      hostId,
      state: 'ready',
      adminState: 'ready',
      grpcAddress: '127.0.0.1:50051',
      capacity: { vcpus: 8, diskMib: 50_000 },
      machine: { cpuModelName: 'Test CPU' },
    });
    await eventually('the registered event', () => events.of(hostId).find((e) => e.kind === 'registered' && e.to === 'ready'));

    await expect(register(hostId, { token: joinToken })).rejects.toMatchObject({ code: ErrorCode.Unauthenticated, message: 'join token already used' });
  });

  it('re-registers a host with its credential (no new one), and refuses a wrong credential', async () => {
    const hostId = `${prefix}-again`;
    const credential = await join(hostId);
    const again = await register(hostId, { credential, grpcAddress: '127.0.0.1:50052' });
    expect(again).toEqual({ accepted: true, heartbeatIntervalSeconds: 1 });
    expect((await hostRow(hostId))?.address).toBe('127.0.0.1:50052');
    expect((await hostRow(hostId))?.credentialHash).toBe(sha256(credential));

    await expect(register(hostId, { credential: `${credential.slice(0, -2)}xx` })).rejects.toMatchObject({ code: ErrorCode.Unauthenticated });
    // Another host's credential is not this one's.
    await expect(register(`${prefix}-other`, { credential })).rejects.toMatchObject({ code: ErrorCode.Unauthenticated });
    // A wrong credential with a fresh join token: the token decides (the agent's fallback), and a new credential comes back.
    const fallback = await register(hostId, { credential: 'stale-credential', token: token(hostId) });
    expect(fallback.hostCredential).toBeDefined();
    expect(fallback.hostCredential).not.toBe(credential);
    await expect(register(hostId, { credential })).rejects.toMatchObject({ code: ErrorCode.Unauthenticated });
  });

  it('refuses tokens that are forged, expired, for another host, and registrations with neither token nor credential', async () => {
    const hostId = `${prefix}-refused`;
    const cases: Record<string, unknown>[] = [
      {},
      { token: mintJoinToken('another-fleet-key-0123456789-0123456789', hostId, 600).token },
      { token: mintJoinToken(JOIN_TOKEN_KEY, hostId, 1, Date.now() - 10_000).token },
      { token: token(`${hostId}-else`) },
      { token: 'kjt1.garbage.garbage' },
    ];
    for (const extra of cases) await expect(register(hostId, extra)).rejects.toMatchObject({ code: ErrorCode.Unauthenticated });
    expect(await hostRow(hostId)).toBeNull();
    expect(await kvView(nc, hostId)).toBeUndefined();
  });

  it("refuses a registration about another host than its subject's, and invalid fields, without spending the token", async () => {
    const hostId = `${prefix}-subject`;
    const joinToken = token(hostId);
    await expect(register(hostId, { token: joinToken }, `${prefix}-sender`)).rejects.toMatchObject({ code: ErrorCode.PermissionDenied });
    for (const invalid of [{ grpcAddress: '' }, { proxyUrl: 'ftp://x' }, { acceleration: 'xen' }, { capacity: { vcpus: -1, memoryMib: 1, sandboxes: 1 } }, { templates: 'base' }]) {
      await expect(register(hostId, { ...invalid, token: joinToken })).rejects.toMatchObject({ code: ErrorCode.InvalidArgument });
    }
    expect(await hostRow(hostId)).toBeNull();
    // The token was never spent: it still admits the host.
    await expect(register(hostId, { token: joinToken })).resolves.toMatchObject({ accepted: true });
  });

  it("shows heartbeats in the KV view and the metrics; ignores forged ones and unregistered hosts'", async () => {
    const hostId = `${prefix}-beat`;
    await join(hostId);
    await client.emit(hostHeartbeatSubject(hostId), heartbeatOf(hostId, 3, { templates: ['base', 'py'] }));
    await eventually('the heartbeat in KV', async () => (await kvView(nc, hostId))?.usage.sandboxes === 3 || undefined, { timeoutMs: 5_000 });
    expect(await kvView(nc, hostId)).toMatchObject({ usage: { sandboxes: 3, vcpus: 3, diskUsedMib: 100 }, templates: ['base', 'py'], agentVersion: 'test-2' });

    // A heartbeat about this host on another's subject, and one from a host that never registered, then a genuine
    // one: delivered in order, so once the genuine one shows, the others were handled.
    await client.emit(hostHeartbeatSubject(`${prefix}-liar`), heartbeatOf(hostId, 9) as never);
    await client.emit(hostHeartbeatSubject(`${prefix}-liar`), heartbeatOf(`${prefix}-liar`, 1));
    await client.emit(hostHeartbeatSubject(hostId), heartbeatOf(hostId, 4));
    await eventually('the genuine heartbeat', async () => (await kvView(nc, hostId))?.usage.sandboxes === 4 || undefined, { timeoutMs: 5_000 });
    await monitor.get(FleetService).flush();
    expect((await kvView(nc, hostId))?.usage.sandboxes).toBe(4);
    expect(await kvView(nc, `${prefix}-liar`)).toBeUndefined();

    const metrics = await (await fetch(`${await monitor.getUrl()}/metrics`)).text();
    expect(metrics).toContain(`kiln_host_usage{host="${hostId}",resource="sandboxes",service="host-monitor"} 4`);
    expect(metrics).toContain(`kiln_host_capacity{host="${hostId}",resource="vcpus",service="host-monitor"} 8`);
    expect(metrics).toContain(`kiln_host_state{host="${hostId}",state="ready",service="host-monitor"} 1`);
    expect(metrics).toMatch(/kiln_host_heartbeats_total\{service="host-monitor"\} [1-9]/);
    expect(metrics).toMatch(/kiln_host_heartbeat_lag_seconds_count\{service="host-monitor"\} [1-9]/);
  });

  it('turns silence into unhealthy, then dead (KV, DB, durable events), and a heartbeat back into ready', async () => {
    const hostId = `${prefix}-silent`;
    await join(hostId);
    const joinedAt = Date.now();
    const dead = await eventually('the dead event', () => events.of(hostId).find((e) => e.to === 'dead'), { timeoutMs: 10_000 });
    const transitions = events.of(hostId).map((e) => [e.kind, e.from, e.to]);
    expect(transitions).toEqual([
      ['registered', undefined, 'ready'],
      ['state-changed', 'ready', 'unhealthy'],
      ['state-changed', 'unhealthy', 'dead'],
    ]);
    // Dead after more than 3 s of silence, noticed by a sweep within about a second.
    expect(Date.parse(dead.at) - joinedAt).toBeGreaterThan(3_000);
    expect(Date.parse(dead.at) - joinedAt).toBeLessThan(6_000);
    expect(await kvView(nc, hostId)).toMatchObject({ state: 'dead', adminState: 'ready' });
    expect(await hostRow(hostId)).toMatchObject({ state: 'dead', adminState: 'ready' });

    // The events are durable: they are on the stream a scheduler's consumer reads.
    const jsm = await nc.jetstreamManager();
    const stream = await jsm.streams.info(HOST_EVENTS_STREAM, { subjects_filter: '>' });
    expect(stream.state.subjects?.[`kiln.events.host.${hostId}`]).toBe(3);

    await client.emit(hostHeartbeatSubject(hostId), heartbeatOf(hostId));
    const resumed = await eventually('the resumed event', () => events.of(hostId).find((e) => e.from === 'dead'));
    expect(resumed).toMatchObject({ kind: 'state-changed', to: 'ready', reason: 'heartbeat resumed' });
    await eventually('ready in KV', async () => (await kvView(nc, hostId))?.state === 'ready' || undefined);
    expect((await hostRow(hostId))?.state).toBe('ready');
  }, 30_000);

  it('sets a host draining, cordoned and ready again; the admin state survives its death', async () => {
    const hostId = `${prefix}-admin`;
    await join(hostId);
    for (const adminState of ['draining', 'cordoned', 'ready'] as const) {
      const view = await client.request(MonitorSubjects.nodesSetStatus, { hostId, adminState }, 5_000);
      expect(view).toMatchObject({ hostId, state: adminState, adminState });
      expect(await kvView(nc, hostId)).toMatchObject({ state: adminState, adminState });
      expect(await hostRow(hostId)).toMatchObject({ state: adminState, adminState });
    }
    expect(events.of(hostId).filter((e) => e.kind === 'state-changed').map((e) => e.to)).toEqual(['draining', 'cordoned', 'ready']);

    await client.request(MonitorSubjects.nodesSetStatus, { hostId, adminState: 'draining' }, 5_000);
    await eventually('dead', async () => (await kvView(nc, hostId))?.state === 'dead' || undefined, { timeoutMs: 10_000 });
    // Set on a dead host: its intent changes, its state does not.
    expect(await client.request(MonitorSubjects.nodesSetStatus, { hostId, adminState: 'cordoned' }, 5_000)).toMatchObject({ state: 'dead', adminState: 'cordoned' });
    await client.emit(hostHeartbeatSubject(hostId), heartbeatOf(hostId));
    await eventually('back, cordoned', async () => (await kvView(nc, hostId))?.state === 'cordoned' || undefined);

    await expect(client.request(MonitorSubjects.nodesSetStatus, { hostId, adminState: 'offline' as never }, 5_000)).rejects.toMatchObject({ code: ErrorCode.InvalidArgument });
    await expect(client.request(MonitorSubjects.nodesSetStatus, { hostId: `${prefix}-nobody`, adminState: 'ready' }, 5_000)).rejects.toMatchObject({ code: ErrorCode.NotFound });
  }, 30_000);

  it('lists and gets hosts; get of an unknown host is not_found', async () => {
    const hostId = `${prefix}-listed`;
    await join(hostId);
    const { nodes } = await client.request(MonitorSubjects.nodesList, {}, 5_000);
    expect(nodes.map((node) => node.hostId)).toContain(hostId);
    expect(await client.request(MonitorSubjects.nodesGet, { hostId }, 5_000)).toMatchObject({ hostId, state: 'ready', createSuccesses: 0 });
    await expect(client.request(MonitorSubjects.nodesGet, { hostId: `${prefix}-nobody` }, 5_000)).rejects.toMatchObject({ code: ErrorCode.NotFound });
  });

  it("counts a host's created and failed creates from its lifecycle events (a crash is neither)", async () => {
    const hostId = `${prefix}-creates`;
    await join(hostId);
    const created = { kind: 'created', sandboxId: 'sbx1', hostId, at: new Date().toISOString() };
    nc.publish(sandboxEventSubject('created', { hostId }), JSON.stringify(created));
    nc.publish(sandboxEventSubject('created', { hostId }), JSON.stringify({ ...created, sandboxId: 'sbx2' }));
    nc.publish(sandboxEventSubject('crashed', { hostId }), JSON.stringify({ ...created, kind: 'crashed' }));
    nc.publish(sandboxEventSubject('create_failed', { hostId }), JSON.stringify({ ...created, sandboxId: 'sbx3', kind: 'create_failed' }));
    await eventually('two creates and one failure counted', async () => {
      const view = await client.request(MonitorSubjects.nodesGet, { hostId }, 5_000);
      return (view.createSuccesses === 2 && view.createFails === 1) || undefined;
    });
    await eventually('the counts in KV', async () => {
      const view = await kvView(nc, hostId);
      return (view?.createSuccesses === 2 && view.createFails === 1) || undefined;
    });
  });

  it('removes a host only once it is empty or dead: offline row without credential, KV entry gone, a removed event', async () => {
    const hostId = `${prefix}-remove`;
    const credential = await join(hostId);
    await client.emit(hostHeartbeatSubject(hostId), heartbeatOf(hostId, 2));
    await eventually('busy', async () => (await client.request(MonitorSubjects.nodesGet, { hostId }, 5_000)).usage.sandboxes === 2 || undefined);
    await expect(client.request(MonitorSubjects.nodesRemove, { hostId }, 5_000)).rejects.toMatchObject({ code: ErrorCode.Conflict });
    expect(await kvView(nc, hostId)).toBeDefined();

    await client.emit(hostHeartbeatSubject(hostId), heartbeatOf(hostId, 0));
    await eventually('empty', async () => (await client.request(MonitorSubjects.nodesGet, { hostId }, 5_000)).usage.sandboxes === 0 || undefined);
    await expect(client.request(MonitorSubjects.nodesRemove, { hostId }, 5_000)).resolves.toEqual({ removed: true });
    expect(await hostRow(hostId)).toMatchObject({ state: 'offline', credentialHash: null });
    expect(await kvView(nc, hostId)).toBeUndefined();
    await eventually('the removed event', () => events.of(hostId).find((e) => e.kind === 'removed' && e.to === 'removed'));
    await expect(client.request(MonitorSubjects.nodesGet, { hostId }, 5_000)).rejects.toMatchObject({ code: ErrorCode.NotFound });
    await expect(client.request(MonitorSubjects.nodesRemove, { hostId }, 5_000)).rejects.toMatchObject({ code: ErrorCode.NotFound });
    // Its credential is revoked: it joins again with a new token only.
    await expect(register(hostId, { credential })).rejects.toMatchObject({ code: ErrorCode.Unauthenticated });
    await expect(register(hostId, { token: token(hostId) })).resolves.toMatchObject({ accepted: true });

    // A dead host may be removed whatever it last reported.
    const lost = `${prefix}-lost`;
    await join(lost);
    await client.emit(hostHeartbeatSubject(lost), heartbeatOf(lost, 5));
    await eventually('dead', async () => (await kvView(nc, lost))?.state === 'dead' || undefined, { timeoutMs: 10_000 });
    await expect(client.request(MonitorSubjects.nodesRemove, { hostId: lost }, 5_000)).resolves.toEqual({ removed: true });
  }, 30_000);

  it('mints join tokens for the admin API, capping their lifetime', async () => {
    const hostId = `${prefix}-minted`;
    const before = Date.now();
    const minted = await client.request(MonitorSubjects.joinTokenCreate, { hostId, ttlSeconds: 999_999 }, 5_000);
    expect(minted.hostId).toBe(hostId);
    expect(Date.parse(minted.expiresAt) - before).toBeLessThanOrEqual(7_201_000);
    expect(Date.parse(minted.expiresAt) - before).toBeGreaterThan(7_100_000);
    await expect(register(hostId, { token: minted.token })).resolves.toMatchObject({ accepted: true });
    await expect(client.request(MonitorSubjects.joinTokenCreate, { hostId: 'bad host id' }, 5_000)).rejects.toMatchObject({ code: ErrorCode.InvalidArgument });
    await expect(client.request(MonitorSubjects.joinTokenCreate, { hostId, ttlSeconds: -5 }, 5_000)).rejects.toMatchObject({ code: ErrorCode.InvalidArgument });
  });

  it('restores the fleet after a restart with a full window for every host: no host dies of the restart', async () => {
    const hostId = `${prefix}-restart`;
    const forgotten = `${prefix}-kvlost`;
    await join(hostId);
    await join(forgotten);
    await client.request(MonitorSubjects.nodesSetStatus, { hostId, adminState: 'cordoned' }, 5_000);
    await client.request(MonitorSubjects.nodesSetStatus, { hostId: forgotten, adminState: 'draining' }, 5_000);
    await monitor.close();
    // Down longer than the dead threshold; meanwhile one host's KV entry is lost: its DB row is what is left of it.
    await (await nc.jetstream().views.kv('KILN_HOSTS')).purge(forgotten);
    await new Promise((resolve) => setTimeout(resolve, 3_500));
    monitor = await startMonitor(env);
    await untilMonitorAnswers(client);
    expect(await client.request(MonitorSubjects.nodesGet, { hostId }, 5_000)).toMatchObject({ state: 'cordoned', adminState: 'cordoned' });
    expect(await client.request(MonitorSubjects.nodesGet, { hostId: forgotten }, 5_000)).toMatchObject({
      state: 'draining',
      adminState: 'draining',
      grpcAddress: '127.0.0.1:50051',
      capacity: { vcpus: 8, diskMib: 50_000 },
    });
    await eventually('the lost KV entry written again', async () => (await kvView(nc, forgotten))?.state === 'draining' || undefined, { timeoutMs: 5_000 });
    await client.emit(hostHeartbeatSubject(hostId), heartbeatOf(hostId));
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect(events.of(hostId).some((e) => e.to === 'dead' || e.to === 'unhealthy')).toBe(false);
    // Then silence counts from the restart as usual.
    await eventually('dead after the restart', async () => (await kvView(nc, hostId))?.state === 'dead' || undefined, { timeoutMs: 10_000 });
  }, 40_000);
});
