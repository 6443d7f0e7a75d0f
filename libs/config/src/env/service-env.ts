import { IsIn, IsInt, IsOptional, IsString, Matches, Max, Min, MinLength, ValidateBy } from 'class-validator';
import { HasRealUrlPasswordInProduction, IsAddressList, IsEnvBoolean, IsIpList, IsRealSecretInProduction, IsServiceUrl } from './validators';

/**
 * Environment variables of every Kiln app. The names are the deployment contract:
 * deploy/ ConfigMaps and Secrets use exactly these (a test checks it).
 */
export class CommonEnv {
  @IsIn(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
  LOG_LEVEL: string = 'info';

  @IsIn(['development', 'production', 'test'])
  NODE_ENV: string = 'development';
}

/**
 * NATS_USER / NATS_PASSWORD: set together; required in production, where the NATS server admits only Kiln's users,
 * each limited to its service's subjects (libs/messaging/src/nats-permissions.ts). Outside it, unset means anonymous.
 */
function natsCredentialViolation(env: Record<string, unknown>, variable: 'NATS_USER' | 'NATS_PASSWORD'): string | undefined {
  const value = env[variable];
  if (value !== undefined) return typeof value === 'string' && value.length > 0 ? undefined : `${variable} must not be empty`;
  if (env.NODE_ENV === 'production') {
    return `${variable} is required in production: NATS admits only authenticated service users (see libs/messaging/src/nats-permissions.ts)`;
  }
  const other = variable === 'NATS_USER' ? 'NATS_PASSWORD' : 'NATS_USER';
  return env[other] !== undefined ? `${variable} is unset but ${other} is set: NATS credentials need both` : undefined;
}

function IsNatsCredential(): PropertyDecorator {
  return ValidateBy({
    name: 'natsCredential',
    validator: {
      validate: (_value: unknown, args) => natsCredentialViolation(args?.object as Record<string, unknown>, args!.property as 'NATS_USER') === undefined,
      defaultMessage: (args) => natsCredentialViolation(args?.object as Record<string, unknown>, args!.property as 'NATS_USER') ?? `${args?.property} is invalid`,
    },
  });
}

/**
 * Every app speaks NATS. Every app also carries the create deadline chain, innermost first, so each layer reads its
 * own deadline from the one validated set and any app refuses a set where a layer would outlive its caller:
 * guest init (host agent) < host create (scheduler) < create request (gateway) < host create + reconcile grace.
 */
export class NatsClientEnv extends CommonEnv {
  @IsServiceUrl(['nats'])
  NATS_URL: string = 'nats://127.0.0.1:4222';

  /** This service's NATS user (`host-<hostId>` for a host agent); see natsCredentialViolation. */
  @IsNatsCredential()
  NATS_USER?: string;

  @IsNatsCredential() @IsRealSecretInProduction()
  NATS_PASSWORD?: string;

  /** PEM CA bundle that signed the NATS server's certificate: set, the connection requires TLS and verifies it. */
  @IsOptional() @IsString() @MinLength(1)
  NATS_TLS_CA_FILE?: string;

  /** Host agent: how long a resumed clone's guest agent may take to accept /init before the create fails. */
  @IsInt() @Min(100)
  SANDBOX_GUEST_INIT_DEADLINE_MS: number = 90_000;

  /**
   * Scheduler: a create's whole budget, from its record to running (placement and every host it tries). Stored as
   * the record's deadline and sent as the deadline of each host call, so nothing outlives it.
   */
  @IsInt() @Min(200)
  SANDBOX_HOST_CREATE_DEADLINE_MS: number = 180_000;

  /**
   * Gateway: how long `POST /sandboxes` waits for the scheduler's answer. Creates can wait for a host to make a
   * template snapshot (a cold boot) and, on a busy TCG host, for guests to come up, so they get longer than other
   * requests; the scheduler answers (success or its own deadline) before this runs out.
   */
  @IsInt() @Min(300)
  @ValidateBy({
    name: 'createDeadlineChain',
    validator: {
      validate: (_value: unknown, args) => NatsClientEnv.createDeadlineChainViolations(args?.object as NatsClientEnv).length === 0,
      defaultMessage: (args) =>
        `each create deadline must be shorter than its caller's: ${NatsClientEnv.createDeadlineChainViolations(args?.object as NatsClientEnv).join('; ')}`,
    },
  })
  SANDBOX_CREATE_TIMEOUT_MS: number = 200_000;

  /**
   * Scheduler reconcile: how long after a transition's deadline (a create's, a pause's) a row still in it is failed
   * and its VM destroyed. Covers clock skew between replicas and a host reply landing at the deadline; reconcile
   * acts only once the gateway stopped waiting, so it never takes a sandbox from a client that still waits for it.
   */
  @IsInt() @Min(0)
  SANDBOX_RECONCILE_GRACE_MS: number = 30_000;

  /**
   * Scheduler: how long a pause (running → pausing → paused) may take, stored on the row as the pausing deadline and
   * sent as the host call's deadline. Unset: SANDBOX_HOST_CREATE_DEADLINE_MS. The gateway waits for a pause, resume,
   * fork or snapshot as long as for a create (SANDBOX_CREATE_TIMEOUT_MS), so each must be shorter than that.
   */
  @IsOptional() @IsInt() @Min(200)
  @ValidateBy({
    name: 'pauseDeadlineChain',
    validator: {
      validate: (value: unknown, args) => typeof value !== 'number' || value < (args?.object as NatsClientEnv).SANDBOX_CREATE_TIMEOUT_MS,
      defaultMessage: (args) => `SANDBOX_PAUSE_DEADLINE_MS must be shorter than SANDBOX_CREATE_TIMEOUT_MS (${(args?.object as NatsClientEnv).SANDBOX_CREATE_TIMEOUT_MS})`,
    },
  })
  SANDBOX_PAUSE_DEADLINE_MS?: number;

  /** Scheduler: how long a resume (paused → resuming → running) may take; as SANDBOX_PAUSE_DEADLINE_MS otherwise. */
  @IsOptional() @IsInt() @Min(200)
  @ValidateBy({
    name: 'resumeDeadlineChain',
    validator: {
      validate: (value: unknown, args) => typeof value !== 'number' || value < (args?.object as NatsClientEnv).SANDBOX_CREATE_TIMEOUT_MS,
      defaultMessage: (args) => `SANDBOX_RESUME_DEADLINE_MS must be shorter than SANDBOX_CREATE_TIMEOUT_MS (${(args?.object as NatsClientEnv).SANDBOX_CREATE_TIMEOUT_MS})`,
    },
  })
  SANDBOX_RESUME_DEADLINE_MS?: number;

  /** The broken links of the create deadline chain, each naming both values; empty when the chain holds. */
  static createDeadlineChainViolations(env: NatsClientEnv): string[] {
    const links: Array<[inner: string, innerMs: number, outer: string, outerMs: number]> = [
      ['SANDBOX_GUEST_INIT_DEADLINE_MS', env.SANDBOX_GUEST_INIT_DEADLINE_MS, 'SANDBOX_HOST_CREATE_DEADLINE_MS', env.SANDBOX_HOST_CREATE_DEADLINE_MS],
      ['SANDBOX_HOST_CREATE_DEADLINE_MS', env.SANDBOX_HOST_CREATE_DEADLINE_MS, 'SANDBOX_CREATE_TIMEOUT_MS', env.SANDBOX_CREATE_TIMEOUT_MS],
      [
        'SANDBOX_CREATE_TIMEOUT_MS',
        env.SANDBOX_CREATE_TIMEOUT_MS,
        'SANDBOX_HOST_CREATE_DEADLINE_MS + SANDBOX_RECONCILE_GRACE_MS',
        env.SANDBOX_HOST_CREATE_DEADLINE_MS + env.SANDBOX_RECONCILE_GRACE_MS,
      ],
    ];
    return links
      .filter(([, innerMs, , outerMs]) => Number.isFinite(innerMs) && Number.isFinite(outerMs) && !(innerMs < outerMs))
      .map(([inner, innerMs, outer, outerMs]) => `${inner} (${innerMs}) must be shorter than ${outer} (${outerMs})`);
  }
}

/** A pause's budget (SANDBOX_PAUSE_DEADLINE_MS, else the create's). */
export function pauseDeadlineMs(env: NatsClientEnv): number {
  return env.SANDBOX_PAUSE_DEADLINE_MS ?? env.SANDBOX_HOST_CREATE_DEADLINE_MS;
}

/** A resume's budget (SANDBOX_RESUME_DEADLINE_MS, else the create's). */
export function resumeDeadlineMs(env: NatsClientEnv): number {
  return env.SANDBOX_RESUME_DEADLINE_MS ?? env.SANDBOX_HOST_CREATE_DEADLINE_MS;
}

/** Control-plane apps keep their state in Postgres. */
export class ControlPlaneEnv extends NatsClientEnv {
  /** In production a password in it must be real (none at all is allowed: certificate, peer or trust auth). */
  @IsServiceUrl(['postgres', 'postgresql']) @HasRealUrlPasswordInProduction({ passwordOptional: true })
  DATABASE_URL: string;
}

/** Control-plane apps with BullMQ queues or shared counters in Redis. */
export class RedisBackedEnv extends ControlPlaneEnv {
  /** `redis://:<password>@host:port`; in production the password is required and must be real. */
  @IsServiceUrl(['redis']) @HasRealUrlPasswordInProduction()
  REDIS_URL: string = 'redis://127.0.0.1:6379';
}

/** The internal-mTLS variables; all three or none, and all three in production. */
const INTERNAL_TLS_VARIABLES = ['KILN_INTERNAL_CA_FILE', 'KILN_INTERNAL_CERT_FILE', 'KILN_INTERNAL_KEY_FILE'] as const;

function internalTlsViolation(env: Record<string, unknown>, variable: string): string | undefined {
  const value = env[variable];
  if (value !== undefined) return typeof value === 'string' && value.length > 0 ? undefined : `${variable} must be a file path`;
  if (env.NODE_ENV === 'production') {
    return `${variable} is required in production: the host agent's gRPC and proxy only speak mTLS there (see libs/config/src/internal-tls.ts)`;
  }
  const set = INTERNAL_TLS_VARIABLES.filter((name) => env[name] !== undefined);
  return set.length ? `${variable} is unset but ${set.join(', ')} is set: internal mTLS needs all three` : undefined;
}

/**
 * A PEM file of the internal plane's mTLS (libs/config/src/internal-tls.ts): KILN_INTERNAL_CA_FILE (the internal CA),
 * KILN_INTERNAL_CERT_FILE (this service's certificate, with its `spiffe://kiln/<service>` URI SAN) and
 * KILN_INTERNAL_KEY_FILE (its unencrypted key). Required in production; outside it, unset means plaintext.
 */
function IsInternalTlsFile(): PropertyDecorator {
  return ValidateBy({
    name: 'internalTlsFile',
    validator: {
      validate: (_value: unknown, args) => internalTlsViolation(args?.object as Record<string, unknown>, args!.property) === undefined,
      defaultMessage: (args) => internalTlsViolation(args?.object as Record<string, unknown>, args!.property) ?? `${args?.property} is invalid`,
    },
  });
}

export class GatewayEnv extends RedisBackedEnv {
  /**
   * The artifact store (a local directory, shared by the services of one machine): uploaded build context archives
   * and built templates, each with its sha256 (libs/artifacts).
   */
  @IsString() @Matches(/^\//, { message: 'KILN_ARTIFACT_DIR must be an absolute path' })
  KILN_ARTIFACT_DIR: string = '/var/lib/kiln/artifacts';

  /**
   * The scheduler's token key (see SchedulerEnv). The gateway derives from it (with a label of its own) the key that
   * signs template file upload URLs, so every gateway replica accepts the URLs of the others. Unset: a random key
   * per process, so an upload URL only works on the gateway that issued it.
   */
  @IsOptional() @IsString() @MinLength(32) @IsRealSecretInProduction()
  KILN_SANDBOX_TOKEN_KEY?: string;

  /**
   * The admin API's token (E2B's `X-Admin-Token`: `/nodes` routes, join tokens for new hosts). Unset: the admin API
   * is disabled and its routes answer 403, so a deployment that never chose a token exposes no fleet control.
   */
  @IsOptional() @IsString() @MinLength(32) @IsRealSecretInProduction()
  KILN_ADMIN_TOKEN?: string;

  /** Largest template build-context archive (`PUT /templates/{id}/files/{hash}`) accepted; larger ones get 413. */
  @IsInt() @Min(1)
  TEMPLATE_UPLOAD_MAX_BYTES: number = 2 * 1024 * 1024 * 1024;

  @IsInt() @Min(1) @Max(65535)
  HTTP_PORT: number = 3000;

  /** Listener for sandbox traffic (`E2B_SANDBOX_URL`, and `{port}-{id}.{domain}` hosts). */
  @IsInt() @Min(1) @Max(65535)
  SANDBOX_PROXY_PORT: number = 3080;

  /**
   * Base domain of sandbox hosts, as returned to SDKs in `domain` (their sandboxDomain), and the E2B_DOMAIN of
   * SDKs that reach Kiln through the TLS listener: `api.{domain}` and `{port}-{sandboxId}.{domain}`.
   */
  @IsString() @MinLength(1)
  KILN_DOMAIN: string = 'localhost';

  /** The TLS listener (`api.{KILN_DOMAIN}` and `{port}-{sandboxId}.{KILN_DOMAIN}`); only opened when TLS_CERT_FILE is set. */
  @IsInt() @Min(1) @Max(65535)
  TLS_PORT: number = 443;

  /**
   * PEM certificate (chain) for `*.{KILN_DOMAIN}`, e.g. a mounted Kubernetes TLS Secret; with TLS_KEY_FILE it turns
   * the TLS listener on. Read, and checked against KILN_DOMAIN, at start; re-read every minute to pick up rotations.
   */
  @IsOptional() @IsString() @MinLength(1)
  @ValidateBy({
    name: 'tlsFilesTogether',
    validator: {
      validate: (_value: unknown, args) => !!(args?.object as GatewayEnv).TLS_KEY_FILE,
      defaultMessage: () => 'TLS_CERT_FILE is set, so TLS_KEY_FILE must be too',
    },
  })
  TLS_CERT_FILE?: string;

  /** Unencrypted PEM private key of TLS_CERT_FILE's certificate. */
  @IsOptional() @IsString() @MinLength(1)
  @ValidateBy({
    name: 'tlsFilesTogether',
    validator: {
      validate: (_value: unknown, args) => !!(args?.object as GatewayEnv).TLS_CERT_FILE,
      defaultMessage: () => 'TLS_KEY_FILE is set, so TLS_CERT_FILE must be too',
    },
  })
  TLS_KEY_FILE?: string;

  @IsInt() @Min(1)
  RATE_LIMIT_PER_MINUTE: number = 1200;

  /**
   * Requests per minute per client address that carry no API key or an invalid one. Past it the address is answered
   * 429 for the rest of the minute before any key lookup (valid keys from it included), so keys cannot be sprayed.
   */
  @IsInt() @Min(1)
  RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE: number = 60;

  /**
   * When the rate limiter's Redis cannot be reached: false (default) refuses API requests with 503, so an outage
   * does not switch the limits off; true lets them through uncounted. /health and /metrics are served either way.
   */
  @IsEnvBoolean()
  RATE_LIMIT_FAIL_OPEN: boolean = false;

  /**
   * Proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed: the client address (per-address rate
   * limits, logs) is read from it only for connections from these. Empty (default): always the connection's peer.
   */
  @IsAddressList(64)
  TRUSTED_PROXIES: string = '';

  @IsInt() @Min(100)
  NATS_REQUEST_TIMEOUT_MS: number = 60_000;

  /** Internal mTLS: the gateway presents spiffe://kiln/gateway to host agents' proxies and requires spiffe://kiln/host-agent. */
  @IsInternalTlsFile()
  KILN_INTERNAL_CA_FILE?: string;

  @IsInternalTlsFile()
  KILN_INTERNAL_CERT_FILE?: string;

  @IsInternalTlsFile()
  KILN_INTERNAL_KEY_FILE?: string;
}

/**
 * A control-plane service that calls host agents' gRPC (the scheduler, the template builder). Which hosts are alive
 * is the host monitor's decision (a host's state), not the caller's; a caller speaks internal mTLS, presenting
 * spiffe://kiln/<service> and requiring spiffe://kiln/host-agent (the host agent lets the template builder call
 * BuildTemplate only).
 */
export class HostAgentCallerEnv extends RedisBackedEnv {
  @IsInternalTlsFile()
  KILN_INTERNAL_CA_FILE?: string;

  @IsInternalTlsFile()
  KILN_INTERNAL_CERT_FILE?: string;

  @IsInternalTlsFile()
  KILN_INTERNAL_KEY_FILE?: string;
}

export class SchedulerEnv extends HostAgentCallerEnv {
  @IsInt() @Min(1) @Max(65535)
  HTTP_PORT: number = 3001;

  /**
   * Key every sandbox's envd and traffic access tokens are derived from (HMAC-SHA256 of the sandbox id), so no token
   * is ever stored. Rotating it invalidates the tokens of running sandboxes.
   */
  @IsString() @MinLength(32) @IsRealSecretInProduction()
  KILN_SANDBOX_TOKEN_KEY: string;

  /**
   * Reconcile pass period. Passes run under a Redis lease, so with several replicas one of them runs each pass
   * (while Redis is unreachable every replica runs its own: the transitions are conditional, so that is only wasteful).
   */
  @IsInt() @Min(1)
  RECONCILE_INTERVAL_SECONDS: number = 30;

  /**
   * Placement's best-of-K: up to K eligible hosts are drawn at random from each locality tier (a clone of the
   * template waiting, the template cached, the rest) and only those are ranked, so one decision costs O(K), not a
   * sort of the whole fleet (apps/scheduler/src/placement/placement-policy.ts).
   */
  @IsInt() @Min(1) @Max(1000)
  PLACEMENT_SAMPLE_SIZE: number = 5;

  /**
   * Default quota of every team, over its sandboxes that hold host resources (pending, starting, running, pausing,
   * resuming; paused ones hold none). A team's own columns (teams.max_*) override each; a create over any is a 429.
   */
  @IsInt() @Min(0)
  TEAM_MAX_CONCURRENT_SANDBOXES: number = 100;

  @IsInt() @Min(0)
  TEAM_MAX_VCPUS: number = 200;

  @IsInt() @Min(0)
  TEAM_MAX_MEMORY_MIB: number = 204_800;

  /** Disk of every sandbox that holds one, paused ones included (a paused sandbox costs disk, not RAM): 1 TiB. */
  @IsInt() @Min(0)
  TEAM_MAX_DISK_MIB: number = 1_048_576;
}

export class TemplateBuilderEnv extends HostAgentCallerEnv {
  @IsInt() @Min(1) @Max(65535)
  HTTP_PORT: number = 3002;

  /**
   * The artifact store (a local directory, shared by the services of one machine): uploaded build context archives
   * and built templates, each with its sha256 (libs/artifacts).
   */
  @IsString() @Matches(/^\//, { message: 'KILN_ARTIFACT_DIR must be an absolute path' })
  KILN_ARTIFACT_DIR: string = '/var/lib/kiln/artifacts';

  @IsInt() @Min(1) @Max(16)
  BUILD_CONCURRENCY: number = 1;

  /** A build still running after this long is stopped and fails (a step that never ends); not retried. */
  @IsInt() @Min(1)
  BUILD_TIMEOUT_SECONDS: number = 3600;

}

/** Heartbeat interval < unhealthy threshold < dead threshold, or the host monitor's state machine makes no sense. */
function hostLivenessTimingViolation(env: HostMonitorEnv): string | undefined {
  const { HOST_HEARTBEAT_INTERVAL_SECONDS: interval, HOST_UNHEALTHY_AFTER_SECONDS: unhealthy, HOST_DEAD_AFTER_SECONDS: dead } = env;
  if (![interval, unhealthy, dead].every((value) => typeof value === 'number')) return undefined;
  if (!(interval < unhealthy)) return `HOST_HEARTBEAT_INTERVAL_SECONDS (${interval}) must be below HOST_UNHEALTHY_AFTER_SECONDS (${unhealthy})`;
  if (!(unhealthy < dead)) return `HOST_UNHEALTHY_AFTER_SECONDS (${unhealthy}) must be below HOST_DEAD_AFTER_SECONDS (${dead})`;
  return undefined;
}

/**
 * The host monitor: the one owner of host liveness. A host silent for HOST_UNHEALTHY_AFTER_SECONDS is `unhealthy`
 * (gets nothing new), for HOST_DEAD_AFTER_SECONDS `dead` (its running sandboxes are lost).
 */
export class HostMonitorEnv extends ControlPlaneEnv {
  @IsInt() @Min(1) @Max(65535)
  HTTP_PORT: number = 3003;

  /** What the monitor tells every agent to heartbeat at (the registration reply), so timing is set in one place. */
  @IsInt() @Min(1)
  HOST_HEARTBEAT_INTERVAL_SECONDS: number = 2;

  @IsInt() @Min(1)
  @ValidateBy({
    name: 'hostLivenessTiming',
    validator: {
      validate: (_value: unknown, args) => hostLivenessTimingViolation(args?.object as HostMonitorEnv) === undefined,
      defaultMessage: (args) => hostLivenessTimingViolation(args?.object as HostMonitorEnv) ?? 'invalid host liveness timing',
    },
  })
  HOST_UNHEALTHY_AFTER_SECONDS: number = 6;

  @IsInt() @Min(1)
  HOST_DEAD_AFTER_SECONDS: number = 12;

  /** Heartbeats update memory; the hosts' KV entries are rewritten in batches this often (transitions at once). */
  @IsInt() @Min(10) @Max(60_000)
  HOST_VIEW_FLUSH_MS: number = 1000;

  /** HMAC key of one-time join tokens (libs/messaging/src/join-token.ts); the stack scripts mint with the same key. */
  @IsString() @MinLength(32) @IsRealSecretInProduction()
  HOST_JOIN_TOKEN_KEY: string;

  /** The longest lifetime a join token may be minted with (requests asking for more are capped). */
  @IsInt() @Min(60)
  HOST_JOIN_TOKEN_MAX_TTL_SECONDS: number = 86400;
}

/** Public resolvers: a host's own may be a loopback stub or a cluster DNS that sandboxes must not query. */
export const DEFAULT_GUEST_NAMESERVERS = '8.8.8.8,1.1.1.1';

/**
 * The host's VMM settings: part of HostAgentEnv, and validated on their own by tools that drive VMs without the
 * whole agent (benchmarks, test harnesses).
 */
export class HostVmmEnv extends NatsClientEnv {
  @IsString() @Matches(/^\//, { message: 'KILN_DATA_DIR must be an absolute path' })
  KILN_DATA_DIR: string = '/var/lib/kiln';

  /**
   * The artifact store (a local directory, shared by the services of one machine): uploaded build context archives
   * and built templates, each with its sha256 (libs/artifacts).
   */
  @IsString() @Matches(/^\//, { message: 'KILN_ARTIFACT_DIR must be an absolute path' })
  KILN_ARTIFACT_DIR: string = '/var/lib/kiln/artifacts';

  /** auto probes KVM once per host (a guest must really boot) and falls back to TCG. */
  @IsIn(['auto', 'kvm', 'tcg'])
  KILN_VMM_ACCEL: string = 'auto';

  @IsString() @MinLength(1)
  KILN_QEMU_BINARY: string = 'qemu-system-x86_64';

  /**
   * TCG translation-buffer cap per VM. Filled lazily, so an idle clone holds only what it translated; below the
   * working set of a command (about 32 MiB for the guest agent's request path) every command retranslates.
   */
  @IsInt() @Min(8) @Max(4096)
  KILN_VMM_TCG_TB_MIB: number = 128;

  /** How long the KVM probe guest may take to print its marker. */
  @IsInt() @Min(1000)
  KILN_VMM_PROBE_TIMEOUT_MS: number = 10_000;

  /**
   * First of the uids (each with the gid of the same number) QEMU switches to once its devices are open: every VM
   * gets one of its own for its lifetime, so an escaped VMM cannot signal or trace another. No passwd entries are
   * needed. Every VMM is also chrooted and may not spawn. 0: QEMU stays root (only its seccomp filter then).
   */
  // With KILN_VMM_UID_COUNT's maximum the range stays below (uid_t)-1, which setuid(2) reads as "unchanged".
  @IsInt() @Min(0) @Max(4_000_000_000)
  KILN_VMM_UID_BASE: number = 200_000;

  /**
   * How many uids from KILN_VMM_UID_BASE on belong to Kiln's VMMs: at least the VMs that run at once (sandboxes,
   * pooled clones, template boots). Agents sharing a KILN_DATA_DIR share the range; others need disjoint ones.
   */
  @IsInt() @Min(1) @Max(1_000_000)
  @ValidateBy({
    name: 'vmmUidsCoverVms',
    validator: {
      // In the agent: every sandbox, pooled clone and template boot (at most 2 at once) needs a uid while it runs.
      validate: (count: unknown, args) => {
        const env = args?.object as Partial<Record<'KILN_VMM_UID_BASE' | 'KILN_MAX_SANDBOXES' | 'KILN_CLONE_POOL_SIZE' | 'KILN_CLONE_POOL_TEMPLATES', number>>;
        if (env.KILN_VMM_UID_BASE === 0 || env.KILN_MAX_SANDBOXES === undefined) return true;
        return Number(count) >= env.KILN_MAX_SANDBOXES + (env.KILN_CLONE_POOL_SIZE ?? 0) * (env.KILN_CLONE_POOL_TEMPLATES ?? 0) + 2;
      },
      defaultMessage: () => 'KILN_VMM_UID_COUNT must cover KILN_MAX_SANDBOXES + KILN_CLONE_POOL_SIZE × KILN_CLONE_POOL_TEMPLATES + 2 template boots',
    },
  })
  KILN_VMM_UID_COUNT: number = 65_536;

  /**
   * Per-VM cgroup (CPU quota from the vCPUs, memory = guest RAM + overhead, pids) so one sandbox cannot take the
   * host. auto: cgroup v2 when its cpu, memory and pids controllers are available, else the v1 hierarchies, else
   * none (with a warning). v2/v1: that one or fail at start. off: no limits.
   */
  @IsIn(['auto', 'v2', 'v1', 'off'])
  KILN_VMM_CGROUP: string = 'auto';

  /**
   * Parent group of the per-VM groups (a path relative to the v2 mount, or to the agent's own group under v1).
   * Unset: kiln-<KILN_NETWORK_PREFIX> in the agent, kiln-vmm in tools that drive VMs without it.
   */
  @IsOptional() @IsString() @Matches(/^[A-Za-z0-9._-]{1,64}(\/[A-Za-z0-9._-]{1,64}){0,4}$/, {
    message: 'KILN_VMM_CGROUP_PARENT must be a relative cgroup path',
  })
  KILN_VMM_CGROUP_PARENT?: string;

  /**
   * What a VMM holds beyond guest RAM, on top of the TCG translation buffer (KILN_VMM_TCG_TB_MIB) under TCG:
   * QEMU's heap, device state and libraries. Measured: 15-107 MiB charged beyond guest RAM for a 512 MiB TCG guest,
   * translation buffer included (docs/bench/noisy-neighbour.md); the default leaves headroom because going over it
   * gets the VMM OOM-killed.
   */
  @IsInt() @Min(16) @Max(65536)
  KILN_VMM_CGROUP_MEMORY_OVERHEAD_MIB: number = 128;

  /** Tasks a VMM may have beyond one per vCPU: main, RCU and I/O threads (QEMU's pool grows to 64) and helpers. */
  @IsInt() @Min(16) @Max(65536)
  KILN_VMM_CGROUP_PIDS_MARGIN: number = 96;

  /**
   * CPU a VMM may use beyond its vCPUs, in percent of one CPU: QEMU's main loop (virtio, timers) and I/O threads run
   * next to the vCPU threads, and a quota of exactly the vCPUs throttles a busy VM's own device emulation
   * (docs/bench/noisy-neighbour.md). quota = vCPUs + this.
   */
  @IsInt() @Min(0) @Max(400)
  KILN_VMM_CGROUP_CPU_HEADROOM_PERCENT: number = 50;

  /**
   * Which VMM runs the host's VMs: qemu (QEMU microvm over QMP) or firecracker (Firecracker under its jailer, guest
   * memory of restores served by the UFFD worker). firecracker is checked at start-up (binary, jailer, kernel, a
   * usable /dev/kvm): the agent refuses to start, in one line, when any is missing.
   */
  @IsIn(['qemu', 'firecracker'])
  KILN_VMM: string = 'qemu';

  /** The Firecracker binary (a static musl build, the same release as the jailer); the jailer copies it per VM. */
  @IsString() @Matches(/^\//, { message: 'KILN_FIRECRACKER_BINARY must be an absolute path' })
  KILN_FIRECRACKER_BINARY: string = '/usr/local/bin/firecracker';

  @IsString() @Matches(/^\//, { message: 'KILN_JAILER_BINARY must be an absolute path' })
  KILN_JAILER_BINARY: string = '/usr/local/bin/jailer';

  /** Uncompressed ELF vmlinux Firecracker boots every VM with (it takes no bzImage). Unset: <KILN_DATA_DIR>/firecracker/vmlinux. */
  @IsOptional() @IsString() @Matches(/^\//, { message: 'KILN_FIRECRACKER_KERNEL must be an absolute path' })
  KILN_FIRECRACKER_KERNEL?: string;

  /**
   * Where the jailer builds each VM's chroot (<base>/firecracker/<vm id>/root). The VM's kernel and disk are hard-linked
   * into it, so it must be on the same filesystem as KILN_DATA_DIR.
   */
  @IsString() @Matches(/^\//, { message: 'KILN_JAILER_CHROOT_BASE must be an absolute path' })
  KILN_JAILER_CHROOT_BASE: string = '/srv/jailer';

  /** The UFFD worker (apps/host-agent/uffd-worker). Unset: that project's build output in this checkout. */
  @IsOptional() @IsString() @Matches(/^\//, { message: 'KILN_UFFD_WORKER_BINARY must be an absolute path' })
  KILN_UFFD_WORKER_BINARY?: string;
}

export class HostAgentEnv extends HostVmmEnv {
  @IsInt() @Min(1) @Max(65535)
  HTTP_PORT: number = 3004;

  @IsInt() @Min(1) @Max(65535)
  GRPC_PORT: number = 50051;

  /** Sandbox-traffic reverse proxy: `/{sandboxId}/{port}/...` or E2b-Sandbox-* headers. */
  @IsInt() @Min(1) @Max(65535)
  PROXY_PORT: number = 5007;

  /**
   * Addresses the gRPC and proxy ports listen on. Unset: KILN_HOST_ADDRESS, the one address the control plane uses,
   * so they are not also open on every other interface of the host (set 0.0.0.0 when that address is not local,
   * e.g. behind NAT).
   */
  @IsOptional() @IsString() @MinLength(1)
  GRPC_HOST?: string;

  @IsOptional() @IsString() @MinLength(1)
  PROXY_HOST?: string;

  /**
   * Internal mTLS: gRPC and the proxy require a client certificate from KILN_INTERNAL_CA_FILE's CA, naming
   * spiffe://kiln/scheduler or spiffe://kiln/gateway (the proxy: the gateway only); this agent presents
   * spiffe://kiln/host-agent.
   */
  @IsInternalTlsFile()
  KILN_INTERNAL_CA_FILE?: string;

  @IsInternalTlsFile()
  KILN_INTERNAL_CERT_FILE?: string;

  @IsInternalTlsFile()
  KILN_INTERNAL_KEY_FILE?: string;

  /** Stable identity of this host; defaults to the machine's hostname. */
  @IsOptional() @IsString() @Matches(/^[a-zA-Z0-9._-]{1,63}$/)
  KILN_HOST_ID?: string;

  /** Address the control plane uses to reach this agent's gRPC and proxy ports. */
  @IsString() @MinLength(1)
  KILN_HOST_ADDRESS: string = '127.0.0.1';

  /**
   * One-time join token the host monitor minted for this host id (`POST /nodes/join-tokens`, or
   * tools/stack/join-token.cjs). Needed only while the agent has no stored credential: the first registration
   * exchanges it for the host credential, kept in `<KILN_DATA_DIR>/host-credential` (0600) and presented from then on.
   */
  @IsOptional() @IsString() @MinLength(16)
  KILN_JOIN_TOKEN?: string;

  /** Key the secrets in this host's sandbox records (their envd tokens) are sealed with on disk (AES-256-GCM, HKDF). */
  @IsString() @MinLength(32) @IsRealSecretInProduction()
  KILN_HOST_STATE_KEY: string;

  @IsIn(['auto', 'qcow2', 'reflink', 'copy'])
  KILN_ROOTFS_DRIVER: string = 'auto';

  /** Upper bound on live sandboxes on this host (also bounded by network slots). */
  @IsInt() @Min(1) @Max(4096)
  KILN_MAX_SANDBOXES: number = 32;

  /** Network slots kept ready ahead of demand. */
  @IsInt() @Min(0) @Max(256)
  KILN_NETWORK_PREFILL: number = 4;

  /**
   * Template builds from images: the registry of references without one (`python:3` → docker.io/library/python:3),
   * an optional mirror those pulls go to instead (host[:port]), and registries reached without TLS verification
   * (comma-separated host[:port]; 127.0.0.1 and localhost always are).
   */
  @IsString() @Matches(/^[A-Za-z0-9.-]+(:\d{1,5})?$/, { message: 'KILN_BUILD_REGISTRY must be host[:port]' })
  KILN_BUILD_REGISTRY: string = 'docker.io';

  @IsOptional() @IsString() @Matches(/^[A-Za-z0-9.-]+(:\d{1,5})?$/, { message: 'KILN_BUILD_REGISTRY_MIRROR must be host[:port]' })
  KILN_BUILD_REGISTRY_MIRROR?: string;

  @IsString() @Matches(/^$|^[A-Za-z0-9.-]+(:\d{1,5})?(\s*,\s*[A-Za-z0-9.-]+(:\d{1,5})?)*$/, {
    message: 'KILN_BUILD_INSECURE_REGISTRIES must be a comma-separated list of host[:port]',
  })
  KILN_BUILD_INSECURE_REGISTRIES: string = '';

  /** Debian mirror for `debian:<suite>` bases; unset: the host's apt source (/etc/apt/sources.list.d/debian.sources). */
  @IsOptional() @IsString() @Matches(/^https?:\/\/\S+$/, { message: 'KILN_BUILD_DEBIAN_MIRROR must be an http(s) URL' })
  KILN_BUILD_DEBIAN_MIRROR?: string;

  /**
   * Template builds run at once on this host (each holds a build VM and a network slot of its own, beyond the
   * sandbox limit); more wait their turn.
   */
  @IsInt() @Min(1) @Max(16)
  KILN_TEMPLATE_BUILD_CONCURRENCY: number = 1;

  /** Upper bound on one RUN or COPY step of a template build; past it the step fails. */
  @IsInt() @Min(10)
  KILN_TEMPLATE_BUILD_STEP_TIMEOUT_SECONDS: number = 3600;

  /** How long a built template's ready command may keep failing before its snapshot (and build) fails. */
  @IsInt() @Min(1) @Max(3600)
  KILN_TEMPLATE_READY_TIMEOUT_SECONDS: number = 120;

  /**
   * Prefix of every namespace, veth and nftables table this agent creates. Two agents on one
   * machine (a dev stack and the e2e suite) need different prefixes, slot CIDRs and data dirs.
   */
  @IsString() @Matches(/^[a-z][a-z0-9]{0,7}$/, { message: 'KILN_NETWORK_PREFIX must be 1-8 lowercase letters/digits' })
  KILN_NETWORK_PREFIX: string = 'kiln';

  /** Pool the per-slot host-side addresses come from; only ever assigned inside agent-made namespaces. */
  @IsString() @Matches(/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/, { message: 'KILN_SLOT_CIDR must be an IPv4 CIDR' })
  KILN_SLOT_CIDR: string = '10.200.0.0/16';

  /**
   * Restored, paused clones kept ready per template in use, so a create is a resume plus the guest's /init
   * (0: every create restores its VM on demand).
   */
  @IsInt() @Min(0) @Max(16)
  KILN_CLONE_POOL_SIZE: number = 2;

  /** Templates whose clones are kept ready at once (least recently used first out). */
  @IsInt() @Min(1) @Max(64)
  KILN_CLONE_POOL_TEMPLATES: number = 4;

  /** A template no sandbox was created from for this long stops being kept warm. */
  @IsInt() @Min(1)
  KILN_CLONE_POOL_IDLE_MINUTES: number = 30;

  /**
   * Run each pooled clone through the guest agent's hot paths before pausing it: a create from the pool then
   * answers its first command about twice as fast under TCG. Off by default because under TCG the translations it
   * front-loads stay in the VMM (~40 MiB per sandbox, over the idle-memory budget); with KVM there are none.
   */
  @IsEnvBoolean()
  KILN_CLONE_POOL_WARM: boolean = false;

  /**
   * A template snapshot that fails is tried again after this many seconds, doubling after every further failure up
   * to KILN_SNAPSHOT_RETRY_MAX_SECONDS, for as long as the agent runs.
   */
  @IsInt() @Min(1)
  KILN_SNAPSHOT_RETRY_INITIAL_SECONDS: number = 2;

  @IsInt() @Min(1)
  KILN_SNAPSHOT_RETRY_MAX_SECONDS: number = 60;

  /**
   * How long a create waits for a template snapshot being built when its gRPC call carries no deadline of its own
   * (the scheduler gives a create 180 s in all; a snapshot under TCG takes about a minute).
   */
  @IsInt() @Min(0)
  KILN_CREATE_TEMPLATE_WAIT_SECONDS: number = 120;

  /**
   * DNS resolvers written to every sandbox's /etc/resolv.conf (comma-separated IPs, at most 3). Public resolvers by
   * default: the host's own may be a loopback stub or a cluster DNS that sandboxes must not query.
   */
  @IsIpList(3)
  KILN_GUEST_NAMESERVERS: string = DEFAULT_GUEST_NAMESERVERS;

  /**
   * IPv4 CIDRs (comma-separated) taken out of the platform floor, the ranges no egress policy can open (private and
   * special ranges, the host's own networks): e.g. an internal package mirror. Sandboxes' own rules then apply to
   * them as to any address. The slot pool and the host itself stay closed. Empty by default.
   */
  @Matches(/^\s*(\d{1,3}(\.\d{1,3}){3}\/\d{1,2}\s*(,\s*\d{1,3}(\.\d{1,3}){3}\/\d{1,2}\s*)*)?$/, {
    message: 'KILN_EGRESS_OPEN_RANGES must be a comma-separated list of IPv4 CIDRs (a.b.c.d/n)',
  })
  KILN_EGRESS_OPEN_RANGES: string = '';

  /**
   * Listener of the egress proxy that enforces sandboxes' domain rules (their TCP 80/443 is redirected to it). The
   * redirect targets each slot veth's host address, which 0.0.0.0 covers; anything but a sandbox is refused.
   */
  @IsString() @Matches(/^\d{1,3}(\.\d{1,3}){3}$/, { message: 'KILN_EGRESS_PROXY_HOST must be an IPv4 address' })
  KILN_EGRESS_PROXY_HOST: string = '0.0.0.0';

  @IsInt() @Min(1) @Max(65535)
  KILN_EGRESS_PROXY_PORT: number = 5008;

  /** vCPUs and memory this host offers to sandboxes; 0 means "detect from the machine". */
  @IsInt() @Min(0)
  KILN_CAPACITY_VCPUS: number = 0;

  @IsInt() @Min(0)
  KILN_CAPACITY_MEMORY_MIB: number = 0;

  /** Disk this host offers to sandboxes' layers and checkpoints (MiB); 0 means "the size of KILN_DATA_DIR's filesystem". */
  @IsInt() @Min(0)
  KILN_CAPACITY_DISK_MIB: number = 0;
}
