import { MonitorSubjects } from './fleet';
import type {
  HostMachineInfo,
  HostUsageReport,
  HostView,
  JoinTokenCreateCommand,
  JoinTokenReply,
  NodeRef,
  NodeRemoveReply,
  NodeSetStatusCommand,
  NodesListReply,
} from './fleet';
import type { EgressPolicy, ErrorPayload, SandboxNetworkSettings, SandboxRoute, SandboxState, SandboxView } from '@kiln/contracts';

/**
 * Every NATS subject Kiln uses, with its payload and reply types. Nothing else
 * in the codebase spells a subject string: import it from here.
 */
export const Subjects = {
  schedulerPing: 'kiln.scheduler.ping',
  sandboxCreate: 'kiln.scheduler.sandboxes.create',
  sandboxGet: 'kiln.scheduler.sandboxes.get',
  sandboxList: 'kiln.scheduler.sandboxes.list',
  sandboxKill: 'kiln.scheduler.sandboxes.kill',
  sandboxSetTimeout: 'kiln.scheduler.sandboxes.set-timeout',
  sandboxRefresh: 'kiln.scheduler.sandboxes.refresh',
  sandboxPause: 'kiln.scheduler.sandboxes.pause',
  sandboxResume: 'kiln.scheduler.sandboxes.resume',
  sandboxConnect: 'kiln.scheduler.sandboxes.connect',
  /** Traffic for a paused sandbox with autoResume: the traffic listener asks for it by sandbox id (no team). */
  sandboxAutoResume: 'kiln.scheduler.sandboxes.auto-resume',
  sandboxFork: 'kiln.scheduler.sandboxes.fork',
  snapshotCreate: 'kiln.scheduler.snapshots.create',
  snapshotList: 'kiln.scheduler.snapshots.list',
  snapshotDelete: 'kiln.scheduler.snapshots.delete',
  sandboxRoute: 'kiln.scheduler.sandboxes.route',
  sandboxUpdateNetwork: 'kiln.scheduler.sandboxes.update-network',
  sandboxLogs: 'kiln.scheduler.sandboxes.logs',
  /** Every host's registration (`hostRegisterSubject(hostId)`): the host monitor's subscription. */
  hostRegister: 'kiln.hosts.register.>',
  /** Every host's heartbeat (`hostHeartbeatSubject(hostId)`): the host monitor's subscription. */
  hostHeartbeat: 'kiln.hosts.heartbeat.>',
  /** The gateway asks the template builders to stop a build (TemplateBuildCancel); fire-and-forget. */
  templateBuildCancel: 'kiln.templates.builds.cancel',
} as const;

/*
 * What a host publishes carries its host id as the subject's last tokens, and each host's NATS user may publish only
 * on its own (libs/messaging/src/nats-permissions.ts): the host id in the subject is authenticated by the server, the
 * one in the payload is not. The id goes last because host ids may hold dots (a hostname): `<prefix>.<hostId>` is
 * granted exactly, so host `a` cannot publish as host `a.b`.
 */
const HOST_REGISTER_PREFIX = 'kiln.hosts.register';
const HOST_HEARTBEAT_PREFIX = 'kiln.hosts.heartbeat';

export type HostRegisterSubject = `${typeof HOST_REGISTER_PREFIX}.${string}`;
export type HostHeartbeatSubject = `${typeof HOST_HEARTBEAT_PREFIX}.${string}`;

export function hostRegisterSubject(hostId: string): HostRegisterSubject {
  return `${HOST_REGISTER_PREFIX}.${hostId}`;
}

export function hostHeartbeatSubject(hostId: string): HostHeartbeatSubject {
  return `${HOST_HEARTBEAT_PREFIX}.${hostId}`;
}

/** The host id a registration subject names, or undefined for any other subject. */
export function hostIdOfRegisterSubject(subject: string): string | undefined {
  return hostIdAfter(HOST_REGISTER_PREFIX, subject);
}

/** The host id a heartbeat subject names, or undefined for any other subject. */
export function hostIdOfHeartbeatSubject(subject: string): string | undefined {
  return hostIdAfter(HOST_HEARTBEAT_PREFIX, subject);
}

function hostIdAfter(prefix: string, subject: string): string | undefined {
  return subject.startsWith(`${prefix}.`) && subject.length > prefix.length + 1 ? subject.slice(prefix.length + 1) : undefined;
}

export interface PingReply {
  service: string;
  at: string;
}

export interface TeamScoped {
  teamId: string;
}

export interface CreateSandboxCommand extends TeamScoped {
  templateRef: string;
  timeoutSeconds: number;
  autoPause: boolean;
  /** Default true. */
  autoPauseMemory?: boolean;
  /** Default false. */
  autoResume?: boolean;
  /** Egress rules (normalised by the gateway), internet access and user-port exposure. */
  network: SandboxNetworkSettings;
  metadata: Record<string, string>;
  envVars: Record<string, string>;
  /** Same key → same sandbox, so a client retry after a lost reply creates nothing new. */
  requestKey?: string;
}

export interface SandboxRef extends TeamScoped {
  sandboxId: string;
}

export interface ListSandboxesQuery extends TeamScoped {
  states?: Array<'running' | 'paused'>;
  metadata?: Record<string, string>;
  /** A template id or alias; a template the team cannot see matches nothing. */
  templateRef?: string;
  /** ISO 8601 (ms precision): only sandboxes started at or after it. */
  startedAfter?: string;
  /** By start time, sandbox id breaking ties; default desc (E2B). */
  order?: 'asc' | 'desc';
  limit: number;
  /** The previous page's `nextToken`; only valid with the same order. */
  nextToken?: string;
}

export interface SandboxPage {
  sandboxes: SandboxView[];
  nextToken?: string;
  /** Running sandboxes matching the filters, regardless of paging (E2B's X-Total-Running); set when running ones were asked for. */
  totalRunning?: number;
}

export interface SetTimeoutCommand extends SandboxRef {
  timeoutSeconds: number;
}

export interface RefreshCommand extends SandboxRef {
  durationSeconds?: number;
}

export interface ResumeCommand extends SandboxRef {
  timeoutSeconds?: number;
  autoPause?: boolean;
}

export interface PauseCommand extends SandboxRef {
  /** E2B's pause `memory` (default true): false keeps only the disk, and the resume cold-boots. */
  keepMemory?: boolean;
}

/** What resume and connect answer: `resumed` is true when this call (or one it waited for) resumed a paused sandbox. */
export interface ResumeReply {
  sandbox: SandboxView;
  resumed: boolean;
}

export interface ForkCommand extends SandboxRef {
  /** Each fork's timeout (E2B default 15). */
  timeoutSeconds?: number;
  /** 1..100, default 1. */
  count?: number;
}

/** E2B's SandboxForkResult: exactly one of the two, per requested fork, in order. */
export type ForkResultView = { sandbox: SandboxView } | { error: { code: number; message: string } };

export interface ForkReply {
  results: ForkResultView[];
}

export interface CreateSnapshotCommand extends SandboxRef {
  name?: string;
}

/** E2B's SnapshotInfo. */
export interface SnapshotInfoView {
  snapshotID: string;
  names: string[];
}

export interface ListSnapshotsQuery extends TeamScoped {
  sandboxId?: string;
  name?: string;
  limit?: number;
  nextToken?: string;
}

export interface SnapshotPage {
  snapshots: SnapshotInfoView[];
  nextToken?: string;
}

/** `DELETE /templates/{templateID}` for a snapshot: the id or name, tag and namespace allowed. */
export interface DeleteSnapshotCommand extends TeamScoped {
  ref: string;
}

export interface DeleteSnapshotReply {
  /** False when the reference names a template that is not a snapshot (deleting templates is not implemented). */
  wasSnapshot: boolean;
}

/** `PUT /sandboxes/{id}/network`: replaces the egress rules of a running sandbox (omitted fields clear). */
export interface UpdateNetworkCommand extends SandboxRef {
  egress: EgressPolicy;
  allowInternetAccess: boolean | null;
}

export interface KillReply {
  /** False when the sandbox was already killed: kill is idempotent. */
  killed: boolean;
}

export interface SandboxLogLine {
  timestamp: string;
  line: string;
}

export interface SandboxLogsReply {
  logs: SandboxLogLine[];
}

export interface HostCapacity {
  vcpus: number;
  memoryMib: number;
  sandboxes: number;
  /** Disk for sandboxes' writable layers and checkpoints (MiB); agents from before the fleet send none. */
  diskMib?: number;
}

/**
 * A host agent's registration, answered by the host monitor. The first one carries a one-time join token
 * (`token`, minted by the monitor for this host id); the reply hands back the host's credential, which the agent
 * keeps and presents (`credential`) on every later registration. The subject's host id is vouched for by NATS.
 */
export interface HostRegistration {
  hostId: string;
  /** One-time join token: only on a registration without a credential. */
  token?: string;
  /** The host credential the monitor issued on its first registration. */
  credential?: string;
  /** host:port of the agent's gRPC server. */
  grpcAddress: string;
  /** Base URL of the agent's sandbox-traffic proxy. */
  proxyUrl: string;
  acceleration: 'kvm' | 'tcg';
  version: string;
  capacity: HostCapacity;
  /** Templates whose current build is on the host. */
  templates: string[];
  /** Of those, the ones with a restored clone waiting: a create placed here skips the restore. */
  readyCloneTemplates: string[];
  machine?: HostMachineInfo;
}

export interface HostRegistrationReply {
  accepted: boolean;
  /** The interval the agent must heartbeat at: the monitor's, so timing is set in one place. */
  heartbeatIntervalSeconds: number;
  /** Issued when the registration used a join token: the agent stores it (0600) and presents it from then on. */
  hostCredential?: string;
}

export interface HostHeartbeat {
  hostId: string;
  at: string;
  capacity: HostCapacity;
  usage: HostCapacity & Partial<Pick<HostUsageReport, 'diskUsedMib' | 'starting'>>;
  templates: string[];
  readyCloneTemplates: string[];
  sandboxIds: string[];
  acceleration?: 'kvm' | 'tcg';
  agentVersion?: string;
}

/** Request/reply subjects: payload → reply. */
export interface RequestMap {
  [Subjects.schedulerPing]: [Record<string, never>, PingReply];
  [Subjects.sandboxCreate]: [CreateSandboxCommand, SandboxView];
  [Subjects.sandboxGet]: [SandboxRef, SandboxView];
  [Subjects.sandboxList]: [ListSandboxesQuery, SandboxPage];
  [Subjects.sandboxKill]: [SandboxRef, KillReply];
  [Subjects.sandboxSetTimeout]: [SetTimeoutCommand, SandboxView];
  [Subjects.sandboxRefresh]: [RefreshCommand, SandboxView];
  [Subjects.sandboxPause]: [PauseCommand, SandboxView];
  [Subjects.sandboxResume]: [ResumeCommand, ResumeReply];
  [Subjects.sandboxConnect]: [ResumeCommand, ResumeReply];
  [Subjects.sandboxAutoResume]: [{ sandboxId: string }, SandboxRoute];
  [Subjects.sandboxFork]: [ForkCommand, ForkReply];
  [Subjects.snapshotCreate]: [CreateSnapshotCommand, SnapshotInfoView];
  [Subjects.snapshotList]: [ListSnapshotsQuery, SnapshotPage];
  [Subjects.snapshotDelete]: [DeleteSnapshotCommand, DeleteSnapshotReply];
  [Subjects.sandboxRoute]: [{ sandboxId: string }, SandboxRoute];
  [Subjects.sandboxUpdateNetwork]: [UpdateNetworkCommand, SandboxView];
  [Subjects.sandboxLogs]: [SandboxRef, SandboxLogsReply];
  [subject: HostRegisterSubject]: [HostRegistration, HostRegistrationReply];
  // The gateway's admin API asks the host monitor. An unknown host id is a not_found error (never an empty reply);
  // set-status answers the host's view after the change; remove is a conflict while the host has live sandboxes
  // and is not dead.
  [MonitorSubjects.nodesList]: [Record<string, never>, NodesListReply];
  [MonitorSubjects.nodesGet]: [NodeRef, HostView];
  [MonitorSubjects.nodesSetStatus]: [NodeSetStatusCommand, HostView];
  [MonitorSubjects.nodesRemove]: [NodeRef, NodeRemoveReply];
  [MonitorSubjects.joinTokenCreate]: [JoinTokenCreateCommand, JoinTokenReply];
}

/** Fire-and-forget subjects (core NATS). */
export interface EventMap {
  [subject: HostHeartbeatSubject]: HostHeartbeat;
  [Subjects.templateBuildCancel]: TemplateBuildCancel;
}

export type RequestSubject = keyof RequestMap;
export type RequestOf<S extends RequestSubject> = RequestMap[S][0];
export type ReplyOf<S extends RequestSubject> = RequestMap[S][1];
export type EventSubject = keyof EventMap;
export type EventOf<S extends EventSubject> = EventMap[S];

// ---- JetStream: durable sandbox lifecycle events -------------------------------------------

export const SANDBOX_EVENTS_STREAM = 'KILN_SANDBOX_EVENTS';
/** Every lifecycle event's subject starts with it; the stream holds `<prefix>.>`. */
export const SANDBOX_EVENTS_SUBJECT_PREFIX = 'kiln.events.sandbox';

/**
 * `create_failed`: a host agent accepted a create and could not start the sandbox (restore, resume, guest init; not a
 * refusal for lack of room, not a destroy during the start). Told apart from `crashed`, which a running sandbox's
 * death also is, for E2B's per-node createFails.
 */
export type SandboxLifecycleKind = 'created' | 'create_failed' | 'exited' | 'crashed' | 'destroyed' | 'transition';

export interface SandboxLifecycleEvent {
  kind: SandboxLifecycleKind;
  sandboxId: string;
  hostId?: string;
  teamId?: string;
  from?: SandboxState;
  to?: SandboxState;
  reason?: string;
  exitCode?: number;
  at: string;
}

/** Who publishes an event: a host agent (about the sandboxes it runs) or the scheduler (state transitions). */
export type SandboxEventSource = { hostId: string } | 'scheduler';

/**
 * `kiln.events.sandbox.<kind>.host.<hostId>` for a host agent's events, `kiln.events.sandbox.<kind>.scheduler` for
 * the scheduler's. The host id goes last for the reason given above hostRegisterSubject.
 */
export function sandboxEventSubject(kind: SandboxLifecycleKind, source: SandboxEventSource): string {
  return eventSubject(kind, source);
}

/** Every event subject of one publisher (any kind): what its NATS user is granted. */
export function sandboxEventSubjectsOf(source: SandboxEventSource): string {
  return eventSubject('*', source);
}

function eventSubject(kindToken: string, source: SandboxEventSource): string {
  const publisher = source === 'scheduler' ? 'scheduler' : `host.${source.hostId}`;
  return `${SANDBOX_EVENTS_SUBJECT_PREFIX}.${kindToken}.${publisher}`;
}

/** The publisher a lifecycle event's subject names (authenticated by the NATS permissions), or undefined if none. */
export function sandboxEventSourceOf(subject: string): SandboxEventSource | undefined {
  const prefix = `${SANDBOX_EVENTS_SUBJECT_PREFIX}.`;
  if (!subject.startsWith(prefix)) return undefined;
  const rest = subject.slice(prefix.length).split('.');
  if (rest.length === 2 && rest[1] === 'scheduler') return 'scheduler';
  if (rest.length >= 3 && rest[1] === 'host' && rest.slice(2).every((token) => token.length > 0)) return { hostId: rest.slice(2).join('.') };
  return undefined;
}

export type { ErrorPayload };

// ---- Template builds ---------------------------------------------------------------------------

const TEMPLATE_BUILDS_PREFIX = 'kiln.templates.builds';

/**
 * `kiln.templates.builds.<buildId>.logs`: the template builder publishes each log entry of a build (one JSON
 * TemplateBuildLogEntry per message, in order) once it is stored; the gateway may follow a build there.
 */
export function templateBuildLogsSubject(buildId: string): string {
  return `${TEMPLATE_BUILDS_PREFIX}.${buildId}.logs`;
}

/** Stop a build: the template builder running it cancels its host call and ends it `error` ("cancelled"). */
export interface TemplateBuildCancel {
  buildId: string;
}

/** Every build's log subject: what the template builder may publish on and a follower may subscribe to. */
export const TEMPLATE_BUILD_LOGS_SUBJECTS = `${TEMPLATE_BUILDS_PREFIX}.*.logs`;
