/**
 * The fleet's contracts: what the host monitor (the one owner of host liveness) publishes about hosts, and what the
 * gateway's admin API asks it. The monitor keeps every host's `HostView` in the JetStream KV bucket
 * `HOSTS_KV_BUCKET` (key: host id), which every scheduler replica watches into an in-memory view; each state change
 * is also a durable `HostStateEvent` on the `HOST_EVENTS_STREAM` stream, consumed once across scheduler replicas.
 */

/**
 * A host's state as the monitor decides it.
 * - `ready`, `draining`, `cordoned`: the operator's intent for a live host (drain: no new sandboxes, the running ones
 *   keep working until they end; cordon: no new sandboxes, may return to ready).
 * - `unhealthy`: missed heartbeats for HOST_UNHEALTHY_AFTER_SECONDS; gets nothing new, its sandboxes are left alone.
 * - `dead`: silent past HOST_DEAD_AFTER_SECONDS; its running sandboxes are ended `error` with reason `host_lost`.
 */
export type FleetHostState = 'ready' | 'draining' | 'cordoned' | 'unhealthy' | 'dead';

/** The operator's intent, kept across liveness changes (a drained host that dies and returns is still draining). */
export type HostAdminState = 'ready' | 'draining' | 'cordoned';

/** The reason recorded on a sandbox ended because its host died. */
export const HOST_LOST_REASON = 'host_lost';

export interface HostResources {
  vcpus: number;
  memoryMib: number;
  /** Disk for sandboxes' writable layers and checkpoints (MiB). */
  diskMib: number;
  sandboxes: number;
}

export interface HostUsageReport extends HostResources {
  /** Disk actually used on the data dir's filesystem (MiB), as opposed to `diskMib`, what sandboxes were promised. */
  diskUsedMib: number;
  /** Sandboxes being created right now. */
  starting: number;
}

export interface HostMachineInfo {
  cpuModelName: string;
  cpuArchitecture: string;
  cpuCount: number;
  memoryTotalMib: number;
}

/** One host as the monitor knows it: the value of its KV entry. */
export interface HostView {
  hostId: string;
  grpcAddress: string;
  proxyUrl: string;
  acceleration: 'kvm' | 'tcg';
  agentVersion: string;
  state: FleetHostState;
  adminState: HostAdminState;
  stateChangedAt: string;
  registeredAt: string;
  lastHeartbeatAt: string;
  capacity: HostResources;
  usage: HostUsageReport;
  /** Templates whose current build is on the host, and of those the ones with a restored clone waiting. */
  templates: string[];
  readyCloneTemplates: string[];
  machine?: HostMachineInfo;
  /** Sandbox creates that succeeded and failed on this host since the monitor started (E2B's node counters). */
  createSuccesses: number;
  createFails: number;
}

export type HostStateEventKind = 'registered' | 'state-changed' | 'removed';

/** A durable record of a host's state change (JetStream, `hostStateEventSubject(hostId)`). */
export interface HostStateEvent {
  kind: HostStateEventKind;
  hostId: string;
  from?: FleetHostState;
  to: FleetHostState | 'removed';
  reason: string;
  at: string;
}

export const HOSTS_KV_BUCKET = 'KILN_HOSTS';
export const HOST_EVENTS_STREAM = 'KILN_HOST_EVENTS';
export const HOST_EVENTS_SUBJECT_PREFIX = 'kiln.events.host';

/** `kiln.events.host.<hostId>`: host ids may hold dots, so the id is the subject's tail (see hostRegisterSubject). */
export function hostStateEventSubject(hostId: string): string {
  return `${HOST_EVENTS_SUBJECT_PREFIX}.${hostId}`;
}

/**
 * KV keys allow `[-/_=.a-zA-Z0-9]`; host ids are `[a-zA-Z0-9._-]{1,63}`, so a host id is its own key. Kept as a
 * function so the mapping has one place.
 */
export function hostKvKey(hostId: string): string {
  return hostId;
}

// ---- Admin requests: gateway → host monitor (NATS request/reply, queue group host-monitor) ----

export const MonitorSubjects = {
  nodesList: 'kiln.monitor.nodes.list',
  nodesGet: 'kiln.monitor.nodes.get',
  nodesSetStatus: 'kiln.monitor.nodes.set-status',
  nodesRemove: 'kiln.monitor.nodes.remove',
  /** Mints a one-time join token for a host id (the admin API's `POST /nodes/join-tokens`). */
  joinTokenCreate: 'kiln.monitor.join-tokens.create',
} as const;

export interface NodesListReply {
  nodes: HostView[];
}

export interface NodeRef {
  hostId: string;
}

export interface NodeSetStatusCommand extends NodeRef {
  adminState: HostAdminState;
}

export interface NodeRemoveReply {
  removed: boolean;
}

export interface JoinTokenCreateCommand {
  hostId: string;
  /** Lifetime of the token; the monitor caps it. */
  ttlSeconds?: number;
}

export interface JoinTokenReply {
  hostId: string;
  token: string;
  expiresAt: string;
}
