import { JSONCodec, NatsConnection, NatsError, connect, createInbox } from 'nats';
import { PrivateServer, eventually, startPrivateNats } from '@kiln/testing';
import {
  HOSTS_KV_BUCKET,
  HOST_EVENTS_STREAM,
  HostEventStream,
  MonitorSubjects,
  NatsUser,
  SANDBOX_EVENTS_STREAM,
  SANDBOX_EVENTS_SUBJECT_PREFIX,
  SandboxLifecycleEvent,
  Subjects,
  generateKilnNatsUsers,
  hostAgentNatsUser,
  hostHeartbeatSubject,
  hostRegisterSubject,
  hostStateEventSubject,
  natsAuthOptions,
  renderNatsServerConfig,
  sandboxEventSourceOf,
  sandboxEventSubject,
} from '../src';
import { NatsConnectionHolder } from '../src/nats-connection';
import { SandboxEventStream } from '../src/sandbox-event-stream';

const codec = JSONCodec<SandboxLifecycleEvent>();

/**
 * The generated nats-server configuration on a real nats-server: only Kiln's users get in, and each may publish only
 * what its grant (nats-permissions.ts) allows; a host agent only under its own host id.
 */
describe('NATS users and permissions (real nats-server, generated config)', () => {
  const hostA = 'host-a';
  // A host id with a dot (a hostname) that extends host A's: A's grant must not cover it.
  const hostB = 'host-a.b';
  let users: NatsUser[];
  let nats: PrivateServer;
  const open: NatsConnection[] = [];

  async function connectAs(user: string, name = user): Promise<NatsConnection> {
    const found = users.find((candidate) => candidate.user === user)!;
    const connection = await connect({ servers: nats.url, name, ...natsAuthOptions({ user, password: found.password }) });
    open.push(connection);
    return connection;
  }

  /** Publishes on `subject` as `connection` and resolves with the permission violation the server reports, if any. */
  async function publishViolation(connection: NatsConnection, subject: string): Promise<string | undefined> {
    const violations: string[] = [];
    const statuses = connection.status();
    void (async () => {
      for await (const status of statuses) {
        const context = (status as { permissionContext?: { operation: string; subject: string } }).permissionContext;
        if (status.data === 'PERMISSIONS_VIOLATION' && context?.subject === subject) violations.push(`${context.operation} to ${context.subject}`);
      }
    })();
    connection.publish(subject, codec.encode({ kind: 'crashed', sandboxId: 'x', at: new Date().toISOString() }));
    await connection.flush();
    // The server's -ERR comes before the PONG that ends the flush; give its dispatch a moment all the same.
    await new Promise((resolve) => setTimeout(resolve, 100));
    (statuses as unknown as { stop(): void }).stop();
    return violations[0];
  }

  /** Resolves with what `subscriber` receives on `subject` within 500 ms of `send()`. */
  async function received(subscriber: NatsConnection, subject: string, send: () => Promise<unknown>): Promise<string[]> {
    const got: string[] = [];
    const subscription = subscriber.subscribe(subject, { callback: (_error, message) => got.push(message.subject) });
    await subscriber.flush();
    await send();
    await new Promise((resolve) => setTimeout(resolve, 500));
    subscription.unsubscribe();
    return got;
  }

  beforeAll(async () => {
    users = generateKilnNatsUsers([hostA, hostB]);
    nats = await startPrivateNats({ config: ({ port, storeDir }) => renderNatsServerConfig({ port, storeDir, users }) });
  });

  afterAll(async () => {
    await Promise.all(open.map((connection) => connection.close().catch(() => undefined)));
    await nats?.stop();
  });

  it('refuses a connection without credentials or with a wrong password, and admits a user with its own', async () => {
    await expect(connect({ servers: nats.url, reconnect: false })).rejects.toMatchObject({ code: 'AUTHORIZATION_VIOLATION' });
    await expect(connect({ servers: nats.url, reconnect: false, user: 'gateway', pass: 'not-the-password' })).rejects.toMatchObject({
      code: 'AUTHORIZATION_VIOLATION',
    });
    const gateway = await connectAs('gateway');
    await expect(gateway.flush()).resolves.toBeUndefined();
  });

  it("lets a host publish heartbeats and registrations on its own subjects only, not on another host's", async () => {
    const agentA = await connectAs(hostAgentNatsUser(hostA));
    const monitor = await connectAs('host-monitor');

    // Control: its own subjects arrive at the host monitor, with no violation.
    expect(await received(monitor, Subjects.hostHeartbeat, () => publishViolation(agentA, hostHeartbeatSubject(hostA)))).toEqual([hostHeartbeatSubject(hostA)]);
    expect(await publishViolation(agentA, hostHeartbeatSubject(hostA))).toBeUndefined();
    expect(await publishViolation(agentA, hostRegisterSubject(hostA))).toBeUndefined();

    // Host B's (whose id extends A's with a dot): refused by the server and never delivered.
    expect(await received(monitor, Subjects.hostHeartbeat, () => publishViolation(agentA, hostHeartbeatSubject(hostB)))).toEqual([]);
    expect(await publishViolation(agentA, hostHeartbeatSubject(hostB))).toBeDefined();
    expect(await publishViolation(agentA, hostRegisterSubject(hostB))).toBeDefined();
    // Nor the old unscoped subject, nor a scheduler request.
    expect(await publishViolation(agentA, 'kiln.hosts.heartbeat')).toBeDefined();
    expect(await publishViolation(agentA, Subjects.sandboxRoute)).toBeDefined();
  });

  it("lets a host publish lifecycle events to the stream under its own host id only", async () => {
    const holderA = new NatsConnectionHolder();
    await holderA.open(nats.url, 'agent-a', { user: hostAgentNatsUser(hostA), password: users.find((u) => u.user === hostAgentNatsUser(hostA))!.password });
    const streamA = new SandboxEventStream(holderA);
    try {
      // A host agent may create the stream when it starts first, and publish its own events to it.
      await streamA.ensureStream();
      const event: SandboxLifecycleEvent = { kind: 'crashed', sandboxId: 'sbx-a', hostId: hostA, at: new Date().toISOString() };
      await expect(streamA.publish(event, { hostId: hostA })).resolves.toBeGreaterThan(0);
      // Host B's subject: the server refuses the publish, so the stream never acknowledges it.
      await expect(streamA.publish({ ...event, sandboxId: 'sbx-b', hostId: hostB }, { hostId: hostB })).rejects.toThrow();
      await expect(streamA.publish(event, 'scheduler')).rejects.toThrow();
      const agentA = holderA.nc;
      expect(await publishViolation(agentA, sandboxEventSubject('crashed', { hostId: hostB }))).toBeDefined();
      // Nor may it manage the stream beyond creating it.
      await expect(agentA.request(`$JS.API.STREAM.DELETE.${SANDBOX_EVENTS_STREAM}`, undefined, { timeout: 1_000 })).rejects.toThrow();

      // What the stream holds: A's event only, under A's subject, which names A as its publisher.
      const jsm = await (await connectAs('scheduler', 'stream-reader')).jetstreamManager();
      const info = await jsm.streams.info(SANDBOX_EVENTS_STREAM, { subjects_filter: '>' });
      expect(Object.keys(info.state.subjects ?? {})).toEqual([sandboxEventSubject('crashed', { hostId: hostA })]);
      expect(sandboxEventSourceOf(sandboxEventSubject('crashed', { hostId: hostA }))).toEqual({ hostId: hostA });
    } finally {
      await holderA.onApplicationShutdown();
    }
  });

  it('does not let the gateway publish lifecycle events or heartbeats, while it receives events and reaches the scheduler', async () => {
    const gateway = await connectAs('gateway');
    const agentA = await connectAs(hostAgentNatsUser(hostA), 'agent-a-events');
    // Control: the gateway's own subscription to lifecycle events receives a host's event, and it may send requests.
    const subject = sandboxEventSubject('destroyed', { hostId: hostA });
    expect(await received(gateway, `${SANDBOX_EVENTS_SUBJECT_PREFIX}.>`, () => publishViolation(agentA, subject))).toEqual([subject]);
    expect(await publishViolation(gateway, Subjects.sandboxRoute)).toBeUndefined();

    for (const forged of [
      sandboxEventSubject('crashed', { hostId: hostA }),
      sandboxEventSubject('transition', 'scheduler'),
      hostHeartbeatSubject(hostA),
      hostRegisterSubject(hostA),
    ]) {
      expect(await publishViolation(gateway, forged)).toBeDefined();
    }
  });

  it('lets the host monitor own the hosts KV bucket and the host events stream, and nothing of the sandboxes', async () => {
    const holder = new NatsConnectionHolder();
    await holder.open(nats.url, 'monitor-js', { user: 'host-monitor', password: users.find((u) => u.user === 'host-monitor')!.password });
    try {
      const kv = await holder.nc.jetstream().views.kv(HOSTS_KV_BUCKET, { history: 1 });
      await expect(kv.put(hostA, JSON.stringify({ hostId: hostA }))).resolves.toBeGreaterThan(0);
      await expect(kv.delete(hostA)).resolves.toBeUndefined();
      const events = new HostEventStream(holder);
      await events.ensureStream();
      const at = new Date().toISOString();
      await expect(events.publish({ kind: 'state-changed', hostId: hostA, from: 'ready', to: 'dead', reason: 'test', at })).resolves.toBeGreaterThan(0);
      // Not a host's voice, nor the scheduler's.
      for (const forged of [hostHeartbeatSubject(hostA), sandboxEventSubject('crashed', { hostId: hostA }), sandboxEventSubject('transition', 'scheduler'), Subjects.sandboxCreate]) {
        expect(await publishViolation(holder.nc, forged)).toBeDefined();
      }
    } finally {
      await holder.onApplicationShutdown();
    }
  });

  it("lets the gateway ask the monitor's admin subjects, and hosts not; the scheduler no longer hears heartbeats", async () => {
    const gateway = await connectAs('gateway', 'gateway-admin');
    const monitor = await connectAs('host-monitor', 'monitor-admin');
    const agentA = await connectAs(hostAgentNatsUser(hostA), 'agent-a-admin');
    for (const subject of Object.values(MonitorSubjects)) {
      expect(await received(monitor, subject, () => publishViolation(gateway, subject))).toEqual([subject]);
      expect(await publishViolation(agentA, subject)).toBeDefined();
    }
    // The gateway reads hosts through the monitor only: not the KV bucket's subjects, not host events.
    expect(await publishViolation(gateway, `$KV.${HOSTS_KV_BUCKET}.${hostA}`)).toBeDefined();
    expect(await publishViolation(gateway, hostStateEventSubject(hostA))).toBeDefined();

    const scheduler = await connectAs('scheduler', 'scheduler-heartbeats');
    const errors: NatsError[] = [];
    scheduler.subscribe(Subjects.hostHeartbeat, { callback: (error) => error && errors.push(error) });
    await scheduler.flush();
    await eventually('the heartbeat subscription refused', () => errors.length >= 1 || undefined, { timeoutMs: 5_000 });
    // It acks what its durable consumer of host events took.
    expect(await publishViolation(scheduler, `$JS.ACK.${HOST_EVENTS_STREAM}.scheduler-host-state.1.1.1.1.0`)).toBeUndefined();
  });

  it("keeps each user's replies to itself: no one may subscribe to another user's inbox or to every reply", async () => {
    const agentA = await connectAs(hostAgentNatsUser(hostA), 'agent-a-inbox');
    const errors: NatsError[] = [];
    const watch = (subject: string) =>
      agentA.subscribe(subject, { callback: (error) => error && errors.push(error) });
    watch('_INBOX.gateway.>');
    watch(createInbox());
    await agentA.flush();
    await eventually('both subscriptions refused', () => errors.length >= 2 || undefined, { timeoutMs: 5_000 });
    expect(errors.every((error) => /permissions violation/i.test(error.message))).toBe(true);
  });
});
