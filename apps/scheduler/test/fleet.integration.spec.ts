import 'reflect-metadata';
import { INestApplicationContext } from '@nestjs/common';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { DEFAULT_NETWORK_SETTINGS, SandboxState } from '@kiln/contracts';
import { SchedulerEnv, loadConfig } from '@kiln/config';
import { HostRegistrationRecord, HostRepository, PrismaService, SandboxRepository, TeamRepository, TemplateRepository } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import { HOST_LOST_REASON, HostEventStream, HostStateEvent, MessagingClient, NatsConnectionHolder, Subjects } from '@kiln/messaging';
import { MetricsRegistry } from '@kiln/telemetry';
import { PrivateServer, eventually, freePort, startPrivateNats, startPrivateRedis } from '@kiln/testing';
import { FleetViewService } from '../src/fleet/fleet-view.service';
import { HostAgentClients } from '../src/hosts/host-agent-clients';
import { ReconcileService } from '../src/reconcile/reconcile.service';
import { RedisConnection } from '../src/timeouts/redis-connection';
import { FakeHostAgent } from './support/fake-host-agent';
import { deleteHostView, hostViewOf, putHostView, registerTestHost, removeTestHost, setTestHostState, testHostRecord, untilFleetViewsHold } from './support/fleet-hosts';
import { startCaller, startScheduler } from './support/scheduler-app';

jest.setTimeout(60_000);

/**
 * The scheduler's side of the fleet, two replicas on real Postgres, Redis and NATS (JetStream KV and the host event
 * stream) with fake host agents: the fleet view follows the host monitor's KV entries, a dead host takes its running
 * sandboxes with it, and concurrent creates through both replicas place every sandbox exactly once.
 */
describe('fleet: view, host loss and placement across two scheduler replicas', () => {
  let db: TestDatabase;
  let nats: PrivateServer;
  let redis: PrivateServer;
  let env: SchedulerEnv;
  let schedulers: NestFastifyApplication[];
  let caller: INestApplicationContext;
  let client: MessagingClient;
  let teamId: string;
  const agents = ['fleet-a', 'fleet-b', 'fleet-c'].map((name) => new FakeHostAgent(name));

  const record = (agent: FakeHostAgent, overrides: Partial<HostRegistrationRecord> = {}): HostRegistrationRecord =>
    testHostRecord(agent.hostName, agent.address, overrides);
  const prisma = () => schedulers[0].get(PrismaService);
  const hostEvents = () => new HostEventStream(schedulers[0].get(NatsConnectionHolder));
  const stateEvent = (hostId: string, from: HostStateEvent['from'], to: HostStateEvent['to']): HostStateEvent => ({
    kind: 'state-changed',
    hostId,
    from,
    to,
    reason: 'test',
    at: new Date().toISOString(),
  });

  async function insertSandbox(id: string, hostId: string, state: SandboxState): Promise<void> {
    await prisma().sandbox.create({
      data: {
        id,
        teamId,
        templateId: 'base',
        state,
        hostId,
        vcpus: 1,
        memoryMib: 512,
        diskMib: 2048,
        timeoutSeconds: 300,
        startedAt: new Date(),
        expiresAt: new Date(Date.now() + 300_000),
        // A row in a transition carries its deadline (far away: reconcile must not settle it for that).
        ...(state === SandboxState.Starting ? { deadlineAt: new Date(Date.now() + 300_000) } : {}),
      },
    });
  }

  const stateOf = async (id: string) => {
    const row = await prisma().sandbox.findUniqueOrThrow({ where: { id } });
    return { state: row.state, reason: row.stateReason };
  };

  beforeAll(async () => {
    [db, nats, redis] = await Promise.all([createTestDatabase(), startPrivateNats(), startPrivateRedis()]);
    await Promise.all(agents.map((agent) => agent.start()));
    env = loadConfig(SchedulerEnv, {
      DATABASE_URL: db.url,
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      KILN_SANDBOX_TOKEN_KEY: 'fleet-integration-sandbox-token-key-0123456789',
      LOG_LEVEL: 'silent',
      HTTP_PORT: String(await freePort()),
      // The test runs reconcile passes itself.
      RECONCILE_INTERVAL_SECONDS: '3600',
    });
    schedulers = [await startScheduler(env), await startScheduler(env)];
    caller = await startCaller(env.NATS_URL);
    client = caller.get(MessagingClient);
    teamId = (await schedulers[0].get(TeamRepository).ensure(`fleet-${db.name}`)).id;
    await schedulers[0]
      .get(TemplateRepository)
      .ensurePublicTemplate({ templateId: 'base', alias: 'base', vcpus: 1, memoryMib: 512, diskMib: 2048, envdVersion: '0.6.4', contentHash: 'fleet' });
    // The hosts' rows, as the monitor writes them when they join (sandboxes refer to them); the KV entries come per test.
    for (const agent of agents) await schedulers[0].get(HostRepository).register(record(agent));
  }, 60_000);

  afterAll(async () => {
    await caller?.close();
    for (const scheduler of schedulers ?? []) await scheduler.close();
    for (const agent of agents) await agent.stop();
    await db?.drop();
    await nats?.stop();
    await redis?.stop();
  }, 60_000);

  it('follows the KV bucket: puts, rewrites and deletes reach every replica, and a replica started later loads what is there', async () => {
    const nc = schedulers[0].get(NatsConnectionHolder).nc;
    const view = hostViewOf(record(agents[0]), { usage: { vcpus: 5, sandboxes: 2 } });
    await putHostView(nc, view);
    await untilFleetViewsHold(schedulers, view.hostId, view);
    expect(schedulers[1].get(FleetViewService).withTemplate('base').map((h) => h.hostId)).toEqual([view.hostId]);

    const rewritten = { ...view, state: 'cordoned' as const, adminState: 'cordoned' as const, templates: [], stateChangedAt: new Date().toISOString() };
    await putHostView(nc, rewritten);
    await untilFleetViewsHold(schedulers, view.hostId, rewritten);
    expect(schedulers[1].get(FleetViewService).withTemplate('base')).toEqual([]);

    // A third replica starting now has the host before it serves anything.
    const late = await startScheduler(env);
    try {
      expect(late.get(FleetViewService).get(view.hostId)).toEqual(rewritten);
      await deleteHostView(nc, view.hostId);
      await untilFleetViewsHold([...schedulers, late], view.hostId, undefined);
      expect(late.get(FleetViewService).hosts).toEqual([]);
    } finally {
      await late.close();
    }
  });

  it('ends the running and starting sandboxes of a host declared dead (error, host_lost) and leaves its paused ones paused', async () => {
    const [agent] = agents;
    await registerTestHost(schedulers, record(agent));
    await insertSandbox('lostrunning1', agent.hostName, SandboxState.Running);
    await insertSandbox('loststarting1', agent.hostName, SandboxState.Starting);
    await insertSandbox('keptpaused1', agent.hostName, SandboxState.Paused);
    await insertSandbox('otherhost1', agents[1].hostName, SandboxState.Running);

    await setTestHostState(schedulers, agent.hostName, 'dead');
    await hostEvents().publish(stateEvent(agent.hostName, 'unhealthy', 'dead'));
    await eventually('the dead host\'s running sandbox ended', async () => (await stateOf('lostrunning1')).state === SandboxState.Error || undefined);
    expect(await stateOf('lostrunning1')).toEqual({ state: SandboxState.Error, reason: HOST_LOST_REASON });
    expect(await stateOf('loststarting1')).toEqual({ state: SandboxState.Error, reason: HOST_LOST_REASON });
    expect((await stateOf('keptpaused1')).state).toBe(SandboxState.Paused);
    expect((await stateOf('otherhost1')).state).toBe(SandboxState.Running);
    const transitions = (await schedulers[0].get(SandboxRepository).events('lostrunning1')).map((e) => [e.toState, e.reason]);
    expect(transitions).toEqual([[SandboxState.Error, HOST_LOST_REASON]]);
  });

  it('reconciles a host that comes back at once: VMs the database ended are destroyed on it, what it lost is ended', async () => {
    const [agent] = agents;
    // The host came back still running the VM whose row ended with it, without one it was running before, and with
    // the paused sandbox's artifacts.
    agent.running.add('lostrunning1');
    agent.paused.add('keptpaused1');
    await insertSandbox('vanished1', agent.hostName, SandboxState.Running);
    await setTestHostState(schedulers, agent.hostName, 'ready');
    await hostEvents().publish(stateEvent(agent.hostName, 'dead', 'ready'));
    await eventually('the orphan VM destroyed on the returning host', () => agent.destroyed.includes('lostrunning1') || undefined);
    await eventually('the vanished sandbox ended', async () => (await stateOf('vanished1')).state === SandboxState.Error || undefined);
    expect(agent.running.has('lostrunning1')).toBe(false);
    expect((await stateOf('keptpaused1')).state).toBe(SandboxState.Paused);
  });

  it('ignores a dead event that arrives after the host came back', async () => {
    const [agent] = agents;
    await insertSandbox('survivor1', agent.hostName, SandboxState.Running);
    agent.running.add('survivor1');
    const late = { ...stateEvent(agent.hostName, 'unhealthy', 'dead'), at: new Date(Date.now() - 60_000).toISOString() };
    await hostEvents().publish(late);
    // Events are handled in order: once this later one is, the late one was too.
    await registerTestHost(schedulers, record(agents[2]));
    await insertSandbox('marker1', agents[2].hostName, SandboxState.Running);
    await setTestHostState(schedulers, agents[2].hostName, 'dead');
    await hostEvents().publish(stateEvent(agents[2].hostName, 'unhealthy', 'dead'));
    await eventually('the marker event handled', async () => (await stateOf('marker1')).state === SandboxState.Error || undefined);
    expect((await stateOf('survivor1')).state).toBe(SandboxState.Running);
    await setTestHostState(schedulers, agents[2].hostName, 'ready');
  });

  it('ends the sandboxes of a dead host in the reconcile sweep even when no event said so, one replica per pass', async () => {
    const [, agent] = agents;
    await registerTestHost(schedulers, record(agent));
    await insertSandbox('sweptlost1', agent.hostName, SandboxState.Running);
    await setTestHostState(schedulers, agent.hostName, 'dead');

    // Another replica holds the lease: this one's pass does nothing.
    const leaseHolder = schedulers[1].get(RedisConnection).commands;
    await leaseHolder.set('kiln:scheduler:reconcile-lease', 'another-replica', 'PX', 60_000);
    const skipped = await schedulers[0].get(ReconcileService).reconcileOnce();
    expect(skipped).toMatchObject({ skipped: 'lease-held-elsewhere', hostLost: [] });
    expect((await stateOf('sweptlost1')).state).toBe(SandboxState.Running);
    await leaseHolder.del('kiln:scheduler:reconcile-lease');

    const report = await schedulers[0].get(ReconcileService).reconcileOnce();
    expect(report.skipped).toBeUndefined();
    // Every running sandbox of the dead host: the one left from the first test too.
    expect(report.hostLost.sort()).toEqual(['otherhost1', 'sweptlost1']);
    expect(await stateOf('sweptlost1')).toEqual({ state: SandboxState.Error, reason: HOST_LOST_REASON });
    // The lease was released at the end of the pass: the other replica's next pass runs.
    expect((await schedulers[1].get(ReconcileService).reconcileOnce()).skipped).toBeUndefined();
    await setTestHostState(schedulers, agent.hostName, 'ready');
  });

  it('places 50 concurrent creates through both replicas: each sandbox is created on exactly one host, none on a host that may not take it', async () => {
    for (const agent of agents) {
      agent.createRequests.length = 0;
      await registerTestHost(schedulers, record(agent));
    }
    // A cordoned host is in the view with room to spare, and still gets nothing.
    await setTestHostState(schedulers, agents[2].hostName, 'cordoned');
    const placedBefore = await Promise.all(schedulers.map((s) => placementsOf(s)));

    // One team, as in the acceptance: its creates queue on its quota row lock, in both replicas at once.
    const created = await Promise.all(
      Array.from({ length: 50 }, () =>
        client.request(
          Subjects.sandboxCreate,
          { teamId, templateRef: 'base', timeoutSeconds: 300, autoPause: false, network: DEFAULT_NETWORK_SETTINGS, metadata: {}, envVars: {} },
          30_000,
        ),
      ),
    );
    const ids = created.map((view) => view.sandboxId);
    expect(new Set(ids).size).toBe(50);
    const requested = agents.flatMap((agent) => agent.createRequests.map((r) => ({ host: agent.hostName, sandboxId: r.sandboxId as string })));
    for (const id of ids) {
      const onHosts = requested.filter((r) => r.sandboxId === id).map((r) => r.host);
      expect({ id, onHosts }).toEqual({ id, onHosts: [expect.any(String)] });
      const row = await prisma().sandbox.findUniqueOrThrow({ where: { id } });
      expect({ id, state: row.state, hostId: row.hostId }).toEqual({ id, state: SandboxState.Running, hostId: onHosts[0] });
    }
    expect(requested).toHaveLength(50);
    expect(agents[2].createRequests).toEqual([]);
    // Spread over the two hosts that may take sandboxes, and both replicas placed some.
    expect(agents[0].createRequests.length).toBeGreaterThan(0);
    expect(agents[1].createRequests.length).toBeGreaterThan(0);
    const placedAfter = await Promise.all(schedulers.map((s) => placementsOf(s)));
    expect(placedAfter[0] - placedBefore[0]).toBeGreaterThan(0);
    expect(placedAfter[1] - placedBefore[1]).toBeGreaterThan(0);
    expect(placedAfter[0] + placedAfter[1] - placedBefore[0] - placedBefore[1]).toBe(50);

    await removeTestHost(schedulers, agents[2].hostName);
  });

  it('reaches a host agent restarted on its address within seconds, though calls failed while it was down', async () => {
    const agent = agents[1];
    await registerTestHost(schedulers, record(agent));
    const clients = schedulers[0].get(HostAgentClients);
    const list = () => clients.call('list', clients.for(agent.hostName, agent.address).listSandboxes({}), 5_000);
    await expect(list()).resolves.toBeDefined();
    await agent.stop();
    // Down for 10 s, as a crashed agent is before it restarts: gRPC's default reconnect backoff (1 s, ×1.6) has grown
    // to gaps of 5-10 s by then.
    for (let i = 0; i < 20; i++) {
      await expect(list()).rejects.toMatchObject({ code: 'unavailable' });
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    await agent.start();
    // gRPC's channel, idle between the failed calls, connects afresh on a call once the agent listens again: answered
    // within one reconnect gap, never left waiting for gRPC's longest backoff (120 s). Not a latency bound: on a loaded
    // 2-core CI host the first answer has taken from under a second to almost 6 s.
    await eventually('the restarted agent answers', () => list().then(() => true, () => false), { timeoutMs: 15_000, intervalMs: 200 });
  });

  it('sends a create on to the next host when the chosen one cannot be reached (dead but not declared dead yet)', async () => {
    // Two candidates only: fleet-a, and a host nothing listens at.
    await removeTestHost(schedulers, agents[1].hostName);
    await registerTestHost(schedulers, record(agents[0]));
    // Nothing listens at its address; its clone of base waiting makes it the first candidate.
    const gone = testHostRecord('fleet-gone', `127.0.0.1:${await freePort()}`, { readyCloneTemplates: ['base'] });
    await registerTestHost(schedulers, gone);
    try {
      agents[0].createRequests.length = 0;
      const view = await client.request(
        Subjects.sandboxCreate,
        { teamId, templateRef: 'base', timeoutSeconds: 300, autoPause: false, network: DEFAULT_NETWORK_SETTINGS, metadata: {}, envVars: {} },
        30_000,
      );
      expect(agents[0].createRequests.map((r) => r.sandboxId)).toEqual([view.sandboxId]);
      const row = await prisma().sandbox.findUniqueOrThrow({ where: { id: view.sandboxId } });
      expect({ state: row.state, hostId: row.hostId }).toEqual({ state: SandboxState.Running, hostId: agents[0].hostName });
      // The control: with no other candidate, the unreachable host's failure is the create's (503), not a retry loop.
      await removeTestHost(schedulers, agents[0].hostName);
      await expect(
        client.request(
          Subjects.sandboxCreate,
          { teamId, templateRef: 'base', timeoutSeconds: 300, autoPause: false, network: DEFAULT_NETWORK_SETTINGS, metadata: {}, envVars: {} },
          30_000,
        ),
      ).rejects.toMatchObject({ code: 'unavailable' });
    } finally {
      await removeTestHost(schedulers, gone.hostId);
    }
  });
});

/** The replica's kiln_placements_total{result="placed"}. */
async function placementsOf(scheduler: INestApplicationContext): Promise<number> {
  const metric = await scheduler.get(MetricsRegistry).registry.getSingleMetric('kiln_placements_total')?.get();
  return metric?.values.find((v) => v.labels.result === 'placed')?.value ?? 0;
}
