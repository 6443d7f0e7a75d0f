import { HOSTS_KV_BUCKET, HOST_EVENTS_STREAM, HOST_EVENTS_SUBJECT_PREFIX, MonitorSubjects } from './fleet';
import {
  SANDBOX_EVENTS_STREAM,
  SANDBOX_EVENTS_SUBJECT_PREFIX,
  Subjects,
  TEMPLATE_BUILD_LOGS_SUBJECTS,
  hostHeartbeatSubject,
  hostRegisterSubject,
  sandboxEventSubject,
  sandboxEventSubjectsOf,
} from './subjects';

/**
 * Who may publish and subscribe to what on Kiln's NATS: one user per service, and one per host agent, each allowed
 * exactly the subjects its code uses (derived from `Subjects` so a new subject cannot drift from its grant). The
 * nats-server configuration is generated from these (nats-server-config.ts); nothing else spells a grant.
 *
 * A host agent's user is per host (`host:<hostId>`) and may publish only on subjects carrying its own host id, so
 * the host id of a heartbeat, registration or lifecycle event subject is vouched for by the server: the scheduler
 * host monitor and the scheduler take it from the subject and ignore what the payload claims (the monitor's
 * registration and heartbeat handlers, the scheduler's reconcile.service.ts).
 *
 * Replies: requesters receive them on their own inbox prefix (`natsInboxPrefix`), so no user can read another's
 * replies (a route reply carries an envd token); responders answer through `allow_responses`, which lets them
 * publish only to the reply subject of a request they received.
 */

/** The service users; a host agent's user is `hostAgentNatsUser(hostId)`. */
export const NATS_SERVICE_USERS = ['gateway', 'scheduler', 'host-monitor', 'template-builder'] as const;
export type NatsServiceUser = (typeof NATS_SERVICE_USERS)[number];

export interface NatsPermissions {
  /** Subjects the user may publish on; empty: none. */
  publish: string[];
  /** Subjects the user may subscribe to (with or without a queue group); empty: none. */
  subscribe: string[];
  /** May publish to the reply subject of a message it received (answers requests). */
  allowResponses: boolean;
}

export interface NatsUser {
  user: string;
  password: string;
  permissions: NatsPermissions;
}

// No service user name has a colon, nor any host id: a host's user can never be a service's (a host named `monitor`).
const HOST_AGENT_USER_PREFIX = 'host:';

export function hostAgentNatsUser(hostId: string): string {
  return `${HOST_AGENT_USER_PREFIX}${hostId}`;
}

/**
 * The inbox prefix of a user's connections (nats `inboxPrefix`), which its grant subscribes under. Dots, allowed
 * in host ids, become `~` (not allowed in them) so that one user's inbox can never be a sub-subject of another's.
 */
export function natsInboxPrefix(user: string): string {
  return `_INBOX.${user.replace(/\./g, '~')}`;
}

function inboxOf(user: string): string {
  return `${natsInboxPrefix(user)}.>`;
}

/** Every request subject the gateway sends: the sandbox API, the scheduler's health ping and the admin API's. */
const GATEWAY_REQUESTS = [
  ...Object.entries(Subjects)
    .filter(([name]) => name !== 'hostRegister' && name !== 'hostHeartbeat')
    .map(([, subject]) => subject),
  ...Object.values(MonitorSubjects),
];

/** Every admin request the monitor answers (derived from MonitorSubjects, so a new one cannot drift from its grant). */
const MONITOR_REQUESTS = Object.values(MonitorSubjects);

/** Host agents' `created` lifecycle events: the monitor counts them per host (E2B's node create counters). */
export const SANDBOX_CREATED_BY_HOSTS = sandboxEventSubject('created', { hostId: '>' });
/** Host agents' `create_failed` lifecycle events: the monitor's per-host createFails. */
export const SANDBOX_CREATE_FAILURES_BY_HOSTS = sandboxEventSubject('create_failed', { hostId: '>' });

const JETSTREAM_ACCOUNT_INFO = '$JS.API.INFO';

/** What a service user may do. */
export function serviceNatsPermissions(service: NatsServiceUser): NatsPermissions {
  switch (service) {
    case 'gateway':
      return {
        publish: GATEWAY_REQUESTS,
        // Core-NATS subscription to every lifecycle event (route invalidation), not a JetStream consumer; and the
        // live logs of template builds (streamed to SDK clients following a build).
        subscribe: [`${SANDBOX_EVENTS_SUBJECT_PREFIX}.>`, TEMPLATE_BUILD_LOGS_SUBJECTS, inboxOf(service)],
        allowResponses: false,
      };
    case 'scheduler':
      return {
        // It owns the event stream and its durable consumer (JetStream API), acks what it consumed, and publishes
        // its own transitions. Requests it answers go back through allowResponses.
        // It also acks the host events its durable consumer took (KILN_HOST_EVENTS) and watches the hosts KV bucket
        // (an ordered consumer: JetStream API plus its inbox).
        publish: [sandboxEventSubjectsOf('scheduler'), '$JS.API.>', `$JS.ACK.${SANDBOX_EVENTS_STREAM}.>`, `$JS.ACK.${HOST_EVENTS_STREAM}.>`],
        subscribe: ['kiln.scheduler.>', inboxOf(service)],
        allowResponses: true,
      };
    case 'host-monitor':
      // The one owner of host liveness: answers registrations and the admin API, hears heartbeats and hosts' create
      // events, writes the hosts KV bucket and the host events stream (and creates both: JetStream API).
      return {
        publish: ['$JS.API.>', `$KV.${HOSTS_KV_BUCKET}.>`, `${HOST_EVENTS_SUBJECT_PREFIX}.>`],
        subscribe: [Subjects.hostRegister, Subjects.hostHeartbeat, ...MONITOR_REQUESTS, SANDBOX_CREATED_BY_HOSTS, SANDBOX_CREATE_FAILURES_BY_HOSTS, inboxOf(service)],
        allowResponses: true,
      };
    case 'template-builder':
      // Publishes the logs of the builds it runs; hears cancellations (every replica: the one running the build acts).
      return { publish: [TEMPLATE_BUILD_LOGS_SUBJECTS], subscribe: [Subjects.templateBuildCancel, inboxOf(service)], allowResponses: false };
  }
}

/**
 * What one host agent may do: register, heartbeat and publish lifecycle events under its own host id only, and the
 * JetStream calls its publisher makes (account info, the event stream's info and, when it starts first, creation).
 */
export function hostAgentNatsPermissions(hostId: string): NatsPermissions {
  return {
    publish: [
      hostRegisterSubject(hostId),
      hostHeartbeatSubject(hostId),
      sandboxEventSubjectsOf({ hostId }),
      JETSTREAM_ACCOUNT_INFO,
      `$JS.API.STREAM.INFO.${SANDBOX_EVENTS_STREAM}`,
      `$JS.API.STREAM.CREATE.${SANDBOX_EVENTS_STREAM}`,
    ],
    subscribe: [inboxOf(hostAgentNatsUser(hostId))],
    allowResponses: false,
  };
}

/** Every user of a deployment: the service users and one per host agent, with the passwords given. */
export function kilnNatsUsers(passwords: Record<NatsServiceUser, string>, hostPasswords: Record<string, string>): NatsUser[] {
  return [
    ...NATS_SERVICE_USERS.map((service) => ({ user: service, password: passwords[service], permissions: serviceNatsPermissions(service) })),
    ...Object.entries(hostPasswords).map(([hostId, password]) => ({
      user: hostAgentNatsUser(hostId),
      password,
      permissions: hostAgentNatsPermissions(hostId),
    })),
  ];
}
