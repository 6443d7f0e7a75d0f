import { Injectable, Logger } from '@nestjs/common';
import { KV } from 'nats';
import { HostState } from '@kiln/contracts';
import { HostAdminStateValue, HostRecord, HostRepository } from '@kiln/db';
import {
  HOSTS_KV_BUCKET,
  FleetHostState,
  HostAdminState,
  HostEventStream,
  HostStateEvent,
  HostView,
  NatsConnectionHolder,
  hostKvKey,
} from '@kiln/messaging';
import type { FleetRegistration } from './fleet-state';

const ADMIN_STATES: ReadonlySet<string> = new Set<HostAdminState>(['ready', 'draining', 'cordoned']);
const FLEET_STATES: ReadonlySet<string> = new Set<FleetHostState>(['ready', 'draining', 'cordoned', 'unhealthy', 'dead']);

/**
 * Where the fleet's state goes: the KV bucket KILN_HOSTS (every scheduler replica's view), the durable event stream
 * KILN_HOST_EVENTS (state changes, consumed once across scheduler replicas) and the hosts table (the durable copy,
 * read by the template builder and on restart). Creates the bucket and the stream idempotently.
 */
@Injectable()
export class FleetPublisher {
  private readonly logger = new Logger(FleetPublisher.name);
  private kv?: KV;

  constructor(
    private readonly nats: NatsConnectionHolder,
    private readonly hostEvents: HostEventStream,
    private readonly hosts: HostRepository,
  ) {}

  /** Idempotent: the stream (one definition, HostEventStream's) and the bucket are created if missing. */
  async ensure(): Promise<void> {
    await this.hostEvents.ensureStream();
    this.kv = await this.nats.nc.jetstream().views.kv(HOSTS_KV_BUCKET, { history: 1 });
  }

  /**
   * What a previous monitor left: the KV views, completed by the DB rows of hosts missing from KV (a lost bucket).
   * Removed hosts (`offline` rows) are left out, and their KV entry, if one lingers, is deleted.
   */
  async loadKnownHosts(): Promise<HostView[]> {
    const stored = new Map<string, HostView>();
    const keys = await this.bucket().keys();
    for await (const key of keys) {
      const entry = await this.bucket().get(key);
      if (!entry || entry.operation !== 'PUT') continue;
      try {
        const view = entry.json<HostView>();
        if (view && typeof view.hostId === 'string' && FLEET_STATES.has(view.state)) stored.set(view.hostId, view);
      } catch {
        this.logger.warn(`KV entry ${key} of ${HOSTS_KV_BUCKET} is not a host view; ignored`);
      }
    }
    const rows = await this.hosts.listAll();
    const known: HostView[] = [];
    for (const row of rows) {
      if (row.state === HostState.Offline || row.state === HostState.Registering) {
        if (stored.has(row.id)) await this.deleteView(row.id);
        stored.delete(row.id);
        continue;
      }
      known.push(stored.get(row.id) ?? viewOfRow(row));
      stored.delete(row.id);
    }
    // A KV entry without a DB row cannot be (rows come first); kept rather than guessed about.
    known.push(...stored.values());
    return known;
  }

  /** Writes views (JSON snapshots) to KV in parallel; returns the host ids whose write failed. */
  async putViews(views: { hostId: string; json: string }[]): Promise<string[]> {
    const results = await Promise.allSettled(views.map(({ hostId, json }) => this.bucket().put(hostKvKey(hostId), json)));
    const failed: string[] = [];
    results.forEach((result, index) => {
      if (result.status === 'rejected') failed.push(views[index].hostId);
    });
    if (failed.length) this.logger.warn(`writing ${failed.length} host view(s) to ${HOSTS_KV_BUCKET} failed: ${String((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason)}`);
    return failed;
  }

  async deleteView(hostId: string): Promise<void> {
    await this.bucket().delete(hostKvKey(hostId));
  }

  async publishEvent(event: HostStateEvent): Promise<void> {
    await this.hostEvents.publish(event);
  }

  /**
   * The registration's durable copy: its state (`state`: the host is heard from, so its admin state), the admin state
   * when it is to be set (`adminState`, a new or forgotten host; undefined keeps the row's), and the credential hash
   * when one was issued.
   */
  async persistRegistration(
    registration: FleetRegistration,
    state: HostAdminState,
    adminState: HostAdminState | undefined,
    credentialHash: string | undefined,
    at: Date,
  ): Promise<void> {
    await this.hosts.register(
      {
        hostId: registration.hostId,
        address: registration.grpcAddress,
        proxyUrl: registration.proxyUrl,
        acceleration: registration.acceleration,
        version: registration.version,
        vcpus: registration.capacity.vcpus,
        memoryMib: registration.capacity.memoryMib,
        sandboxes: registration.capacity.sandboxes,
        diskMib: registration.capacity.diskMib ?? 0,
        templates: registration.templates,
        readyCloneTemplates: registration.readyCloneTemplates ?? [],
        ...(credentialHash !== undefined ? { credentialHash } : {}),
        state: state as HostState,
        ...(adminState !== undefined ? { adminState } : {}),
      },
      at,
    );
  }

  async persistState(hostId: string, state: FleetHostState, adminState: HostAdminState, at: Date): Promise<void> {
    await this.hosts.setState(hostId, state as HostState, adminState as HostAdminStateValue, at);
  }

  async persistRemoval(hostId: string, at: Date): Promise<void> {
    await this.hosts.remove(hostId, at);
  }

  private bucket(): KV {
    if (!this.kv) throw new Error(`the ${HOSTS_KV_BUCKET} bucket was used before ensure()`);
    return this.kv;
  }
}

/** A host's view rebuilt from its DB row (what a restart knows of a host missing from KV). */
export function viewOfRow(row: HostRecord): HostView {
  const adminState = (ADMIN_STATES.has(row.adminState) ? row.adminState : 'ready') as HostAdminState;
  const state = (FLEET_STATES.has(row.state) ? row.state : adminState) as FleetHostState;
  return {
    hostId: row.id,
    grpcAddress: row.address,
    proxyUrl: row.proxyUrl,
    acceleration: row.acceleration === 'kvm' ? 'kvm' : 'tcg',
    agentVersion: row.version ?? '',
    state,
    adminState,
    stateChangedAt: row.stateChangedAt.toISOString(),
    registeredAt: row.registeredAt.toISOString(),
    lastHeartbeatAt: (row.lastHeartbeatAt ?? row.registeredAt).toISOString(),
    capacity: { vcpus: row.vcpuCapacity, memoryMib: row.memoryMibCapacity, diskMib: row.diskMibCapacity, sandboxes: row.sandboxCapacity },
    usage: { vcpus: row.vcpuUsed, memoryMib: row.memoryMibUsed, diskMib: 0, sandboxes: row.sandboxCount, diskUsedMib: row.diskMibUsed, starting: 0 },
    templates: row.cachedTemplates,
    readyCloneTemplates: row.readyCloneTemplates,
    createSuccesses: 0,
    createFails: 0,
  };
}
