import { AckPolicy, DeliverPolicy, JSONCodec, connect } from 'nats';
import { Client as PgClient } from 'pg';
import { HOSTS_KV_BUCKET, HostView, SANDBOX_EVENTS_STREAM, SandboxLifecycleEvent, hostKvKey, natsAuthOptions } from '@kiln/messaging';
import { SchedulerEnv, loadConfig } from '@kiln/config';
import { HostAgentClients } from '../../../apps/scheduler/src/hosts/host-agent-clients';
import { eventually } from '@kiln/testing';
import { createSandbox, killSandbox } from '../harness/api-client';
import { StackInfo, readStack } from '../harness/stack-harness';

/** Issue 2's inter-service wiring, observed on the running stack rather than in one process. */
describe('inter-service wiring (real stack)', () => {
  let stack: StackInfo;
  let db: PgClient;

  beforeAll(async () => {
    stack = readStack();
    db = new PgClient({ connectionString: stack.databaseUrl });
    await db.connect();
  });

  afterAll(async () => {
    await db?.end();
  });

  it('calls the host agent over gRPC with the scheduler’s own client', async () => {
    const clients = new HostAgentClients(loadConfig(SchedulerEnv, stack.appEnvs.scheduler));
    try {
      const agent = clients.for(stack.hostAgent.hostId, stack.hostAgent.grpcAddress);
      const info = await clients.call('host info', agent.hostInfo({}), 10_000);
      expect(info.hostId).toBe(stack.hostAgent.hostId);
      expect(info.proxyUrl).toBe(stack.hostAgent.proxyUrl);
      await expect(clients.call('get', agent.getSandbox({ sandboxId: 'nosuchsandbox' }), 10_000)).rejects.toMatchObject({ code: 'not_found' });
    } finally {
      clients.onApplicationShutdown();
    }
  });

  it('registers the host agent with the host monitor, which keeps its view in the fleet KV fresh', async () => {
    const { rows } = await db.query('select state from hosts where id = $1', [stack.hostAgent.hostId]);
    expect(rows[0]?.state).toBe('ready');
    // What every scheduler replica places from: the monitor's HostView in the KV bucket, read as the scheduler does.
    const scheduler = stack.natsUsers.find((user) => user.user === 'scheduler')!;
    const nc = await connect({ servers: stack.natsUrl, ...natsAuthOptions({ user: scheduler.user, password: scheduler.password }) });
    try {
      const kv = await nc.jetstream().views.kv(HOSTS_KV_BUCKET);
      const read = async () => JSONCodec<HostView>().decode((await kv.get(hostKvKey(stack.hostAgent.hostId)))!.value);
      const first = await read();
      expect({ state: first.state, grpcAddress: first.grpcAddress }).toEqual({ state: 'ready', grpcAddress: stack.hostAgent.grpcAddress });
      const later = await eventually('a newer heartbeat in the view', async () => {
        const view = await read();
        return view.lastHeartbeatAt > first.lastHeartbeatAt ? view : undefined;
      }, { timeoutMs: 15_000 });
      expect(Date.now() - new Date(later.lastHeartbeatAt).getTime()).toBeLessThan(15_000);
      expect(later.templates).toContain('base');
    } finally {
      await nc.close();
    }
    const metrics = await (await fetch(`http://127.0.0.1:${stack.httpPorts['host-monitor']}/metrics`)).text();
    expect(metrics).toMatch(/^kiln_host_heartbeats_total(\{[^}]*\})? [1-9]/m);
    const ready = metrics.split('\n').find((line) => line.startsWith('kiln_host_state{') && line.includes(`host="${stack.hostAgent.hostId}"`) && line.includes('state="ready"'));
    expect(ready?.split(' ').pop()).toBe('1');
  });

  it('tells placement which templates have a restored clone waiting on the host', async () => {
    const clients = new HostAgentClients(loadConfig(SchedulerEnv, stack.appEnvs.scheduler));
    try {
      const agent = clients.for(stack.hostAgent.hostId, stack.hostAgent.grpcAddress);
      // The agent fills a pool for each local template at start.
      const base = await eventually('a pooled clone of base in host info', async () => {
        const info = await clients.call('host info', agent.hostInfo({}), 10_000);
        const template = info.templates.find((t) => t.templateId === 'base');
        return template && template.readyClones > 0 && template;
      }, { timeoutMs: 60_000 });
      expect(base.snapshotReady).toBe(true);
    } finally {
      clients.onApplicationShutdown();
    }
    // Placement reads it from the host monitor's view of the host (the KV bucket), fed by the agent's heartbeats.
    const scheduler = stack.natsUsers.find((user) => user.user === 'scheduler')!;
    const nc = await connect({ servers: stack.natsUrl, ...natsAuthOptions({ user: scheduler.user, password: scheduler.password }) });
    try {
      const kv = await nc.jetstream().views.kv(HOSTS_KV_BUCKET);
      const view = await eventually('base among the host view\'s ready-clone templates', async () => {
        const entry = await kv.get(hostKvKey(stack.hostAgent.hostId));
        const current = entry && JSONCodec<HostView>().decode(entry.value);
        return current?.readyCloneTemplates.includes('base') && current;
      }, { timeoutMs: 30_000 });
      expect(view.readyCloneTemplates).toContain('base');
    } finally {
      await nc.close();
    }
  });

  it('records every lifecycle transition as a sandbox event and on the JetStream stream', async () => {
    // The stack's NATS admits its users only; the scheduler's may read the event stream (JetStream API, its inbox).
    const scheduler = stack.natsUsers.find((user) => user.user === 'scheduler')!;
    const nc = await connect({ servers: stack.natsUrl, ...natsAuthOptions({ user: scheduler.user, password: scheduler.password }) });
    try {
      const jsm = await nc.jetstreamManager();
      const durable = `wiring-${Date.now()}`;
      await jsm.consumers.add(SANDBOX_EVENTS_STREAM, { durable_name: durable, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.New });
      const sandbox = await createSandbox(stack);
      await killSandbox(stack, sandbox.sandboxID);
      const consumer = await nc.jetstream().consumers.get(SANDBOX_EVENTS_STREAM, durable);
      const codec = JSONCodec<SandboxLifecycleEvent>();
      const seen: SandboxLifecycleEvent[] = [];
      await eventually('created, running and destroyed events', async () => {
        const batch = await consumer.fetch({ max_messages: 50, expires: 1_000 });
        for await (const message of batch) {
          const event = codec.decode(message.data);
          if (event.sandboxId === sandbox.sandboxID) seen.push(event);
          message.ack();
        }
        const kinds = seen.map((e) => (e.kind === 'transition' ? `to:${e.to}` : e.kind));
        return ['to:starting', 'to:running', 'created', 'to:killed', 'destroyed'].every((k) => kinds.includes(k));
      });
      const { rows } = await db.query('select from_state, to_state from sandbox_events where sandbox_id = $1 order by id', [sandbox.sandboxID]);
      expect(rows.map((r) => `${r.from_state ?? 'new'}>${r.to_state}`)).toEqual(['new>pending', 'pending>starting', 'starting>running', 'running>killed']);
      await jsm.consumers.delete(SANDBOX_EVENTS_STREAM, durable);
    } finally {
      await nc.close();
    }
  });
});
