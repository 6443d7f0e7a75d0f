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
  sandboxRoute: 'kiln.scheduler.sandboxes.route',
  sandboxUpdateNetwork: 'kiln.scheduler.sandboxes.update-network',
  sandboxLogs: 'kiln.scheduler.sandboxes.logs',
  hostRegister: 'kiln.scheduler.hosts.register',
  hostHeartbeat: 'kiln.hosts.heartbeat',
} as const;

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
}

export interface HostRegistration {
  hostId: string;
  token: string;
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
}

export interface HostRegistrationReply {
  accepted: boolean;
  heartbeatIntervalSeconds: number;
}

export interface HostHeartbeat {
  hostId: string;
  at: string;
  capacity: HostCapacity;
  usage: HostCapacity;
  templates: string[];
  readyCloneTemplates: string[];
  sandboxIds: string[];
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
  [Subjects.sandboxPause]: [SandboxRef, SandboxView];
  [Subjects.sandboxResume]: [ResumeCommand, SandboxView];
  [Subjects.sandboxConnect]: [ResumeCommand, SandboxView];
  [Subjects.sandboxRoute]: [{ sandboxId: string }, SandboxRoute];
  [Subjects.sandboxUpdateNetwork]: [UpdateNetworkCommand, SandboxView];
  [Subjects.sandboxLogs]: [SandboxRef, SandboxLogsReply];
  [Subjects.hostRegister]: [HostRegistration, HostRegistrationReply];
}

/** Fire-and-forget subjects (core NATS). */
export interface EventMap {
  [Subjects.hostHeartbeat]: HostHeartbeat;
}

export type RequestSubject = keyof RequestMap;
export type RequestOf<S extends RequestSubject> = RequestMap[S][0];
export type ReplyOf<S extends RequestSubject> = RequestMap[S][1];
export type EventSubject = keyof EventMap;
export type EventOf<S extends EventSubject> = EventMap[S];

// ---- JetStream: durable sandbox lifecycle events -------------------------------------------

export const SANDBOX_EVENTS_STREAM = 'KILN_SANDBOX_EVENTS';
export const SANDBOX_EVENTS_SUBJECT_PREFIX = 'kiln.events.sandbox';

export type SandboxLifecycleKind = 'created' | 'exited' | 'crashed' | 'destroyed' | 'transition';

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

export function sandboxEventSubject(kind: SandboxLifecycleKind): string {
  return `${SANDBOX_EVENTS_SUBJECT_PREFIX}.${kind}`;
}

export type { ErrorPayload };
