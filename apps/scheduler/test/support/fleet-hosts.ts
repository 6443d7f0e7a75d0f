import type { INestApplicationContext } from '@nestjs/common';
import { HostRegistrationRecord, HostRepository, PrismaService } from '@kiln/db';
import { FleetHostState, HOSTS_KV_BUCKET, HostView, NatsConnectionHolder, hostKvKey } from '@kiln/messaging';
import { eventually } from '@kiln/testing';
import { NatsConnection, connect } from 'nats';
import { FleetViewService } from '../../src/fleet/fleet-view.service';

/**
 * Test stand-in for the host monitor: hosts are written as the monitor writes them (the DB row, which sandboxes'
 * foreign keys need, and the HostView in the KV bucket KILN_HOSTS that schedulers place from), then awaited in the
 * schedulers' fleet views so a test's next create sees them.
 */

export type TestHostOverrides = Partial<Omit<HostView, 'usage' | 'capacity'>> & {
  usage?: Partial<HostView['usage']>;
  capacity?: Partial<HostView['capacity']>;
};

/** A fake host agent's registration as the scheduler suites use it: 64 vCPUs, 64 GiB, 64 sandboxes, `base` cached. */
export function testHostRecord(hostId: string, address: string, overrides: Partial<HostRegistrationRecord> = {}): HostRegistrationRecord {
  return {
    hostId,
    address,
    proxyUrl: 'http://127.0.0.1:1',
    acceleration: 'tcg',
    version: 'test',
    vcpus: 64,
    memoryMib: 65536,
    sandboxes: 64,
    templates: ['base'],
    readyCloneTemplates: [],
    ...overrides,
  };
}

/** The HostView the monitor would publish for a host that just registered with `record` (no usage yet). */
export function hostViewOf(record: HostRegistrationRecord, overrides: TestHostOverrides = {}): HostView {
  const now = new Date().toISOString();
  const { usage, capacity, ...rest } = overrides;
  return {
    hostId: record.hostId,
    grpcAddress: record.address,
    proxyUrl: record.proxyUrl,
    acceleration: record.acceleration === 'kvm' ? 'kvm' : 'tcg',
    agentVersion: record.version,
    state: 'ready',
    adminState: 'ready',
    stateChangedAt: now,
    registeredAt: now,
    lastHeartbeatAt: now,
    capacity: { vcpus: record.vcpus, memoryMib: record.memoryMib, diskMib: record.diskMib ?? 0, sandboxes: record.sandboxes, ...capacity },
    usage: { vcpus: 0, memoryMib: 0, diskMib: 0, sandboxes: 0, diskUsedMib: 0, starting: 0, ...usage },
    templates: record.templates,
    readyCloneTemplates: record.readyCloneTemplates,
    createSuccesses: 0,
    createFails: 0,
    ...rest,
  };
}

export async function putHostView(nc: NatsConnection, view: HostView): Promise<void> {
  const kv = await nc.jetstream().views.kv(HOSTS_KV_BUCKET, { history: 1 });
  await kv.put(hostKvKey(view.hostId), JSON.stringify(view));
}

export async function deleteHostView(nc: NatsConnection, hostId: string): Promise<void> {
  const kv = await nc.jetstream().views.kv(HOSTS_KV_BUCKET, { history: 1 });
  await kv.delete(hostKvKey(hostId));
}

/** Resolves once every scheduler's fleet view holds exactly `view` (or, with `view` undefined, no such host). */
export async function untilFleetViewsHold(schedulers: INestApplicationContext[], hostId: string, view: HostView | undefined): Promise<void> {
  const wanted = view === undefined ? undefined : JSON.stringify(view);
  await eventually(
    `host ${hostId} in the fleet view of ${schedulers.length} scheduler(s)`,
    () => schedulers.every((s) => {
      const held = s.get(FleetViewService).get(hostId);
      return (held === undefined ? undefined : JSON.stringify(held)) === wanted;
    }),
    { timeoutMs: 10_000, intervalMs: 20 },
  );
}

/**
 * Registers a host as the monitor would (row + KV entry) through the first scheduler's NATS connection and waits
 * until every scheduler given places from it.
 */
export async function registerTestHost(
  schedulers: INestApplicationContext | INestApplicationContext[],
  record: HostRegistrationRecord,
  overrides: TestHostOverrides = {},
): Promise<HostView> {
  const all = Array.isArray(schedulers) ? schedulers : [schedulers];
  await all[0].get(HostRepository).register(record);
  const view = hostViewOf(record, overrides);
  await putHostView(all[0].get(NatsConnectionHolder).nc, view);
  await untilFleetViewsHold(all, record.hostId, view);
  return view;
}

/** Rewrites a host's KV entry with a new state (and the row's state), as the monitor does on a transition. */
export async function setTestHostState(
  schedulers: INestApplicationContext | INestApplicationContext[],
  hostId: string,
  state: FleetHostState,
): Promise<HostView> {
  const all = Array.isArray(schedulers) ? schedulers : [schedulers];
  const current = all[0].get(FleetViewService).get(hostId);
  if (!current) throw new Error(`host ${hostId} is not in the fleet view`);
  const view: HostView = { ...current, state, stateChangedAt: new Date().toISOString() };
  await all[0].get(PrismaService).host.update({ where: { id: hostId }, data: { state, stateChangedAt: new Date(view.stateChangedAt) } });
  await putHostView(all[0].get(NatsConnectionHolder).nc, view);
  await untilFleetViewsHold(all, hostId, view);
  return view;
}

/** Takes a host out of the KV bucket (the monitor's remove); its row stays, as the monitor leaves it. */
export async function removeTestHost(schedulers: INestApplicationContext | INestApplicationContext[], hostId: string): Promise<void> {
  const all = Array.isArray(schedulers) ? schedulers : [schedulers];
  await deleteHostView(all[0].get(NatsConnectionHolder).nc, hostId);
  await untilFleetViewsHold(all, hostId, undefined);
}

/**
 * A HostRepository whose `register` also does what the host monitor does when a host joins: the host's HostView in
 * the KV bucket, awaited in the fleet view of the schedulers running at that moment. For suites that seed hosts
 * through the repository (the gateway's test stack), so placement sees them as it sees hosts in a deployment.
 */
export class FleetPublishingHostRepository extends HostRepository {
  private connection?: Promise<NatsConnection>;

  constructor(
    prisma: PrismaService,
    private readonly natsUrl: string,
    private readonly schedulers: () => INestApplicationContext[],
  ) {
    super(prisma);
  }

  override async register(record: HostRegistrationRecord, at?: Date): Promise<void> {
    await super.register(record, at);
    const view = hostViewOf(record);
    await putHostView(await this.nats(), view);
    const running = this.schedulers();
    if (running.length > 0) await untilFleetViewsHold(running, record.hostId, view);
  }

  async close(): Promise<void> {
    const connection = await this.connection?.catch(() => undefined);
    await connection?.close();
  }

  private nats(): Promise<NatsConnection> {
    this.connection ??= connect({ servers: this.natsUrl, name: 'test-fleet-hosts' });
    return this.connection;
  }
}
