import { IsIn, IsInt, IsOptional, IsString, Matches, Max, Min, MinLength, ValidateBy } from 'class-validator';
import { IsEnvBoolean, IsIpList, IsServiceUrl } from './validators';

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
 * Every app speaks NATS. Every app also carries the create deadline chain, innermost first, so each layer reads its
 * own deadline from the one validated set and any app refuses a set where a layer would outlive its caller:
 * guest init (host agent) < host create (scheduler) < create request (gateway) < host create + reconcile grace.
 */
export class NatsClientEnv extends CommonEnv {
  @IsServiceUrl(['nats'])
  NATS_URL: string = 'nats://127.0.0.1:4222';

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

/** Control-plane apps keep their state in Postgres. */
export class ControlPlaneEnv extends NatsClientEnv {
  @IsServiceUrl(['postgres', 'postgresql'])
  DATABASE_URL: string;
}

/** Control-plane apps with BullMQ queues or shared counters in Redis. */
export class RedisBackedEnv extends ControlPlaneEnv {
  @IsServiceUrl(['redis'])
  REDIS_URL: string = 'redis://127.0.0.1:6379';
}

export class GatewayEnv extends RedisBackedEnv {
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

  @IsInt() @Min(100)
  NATS_REQUEST_TIMEOUT_MS: number = 60_000;
}

export class SchedulerEnv extends RedisBackedEnv {
  @IsInt() @Min(1) @Max(65535)
  HTTP_PORT: number = 3001;

  /** Shared secret host agents present when they register. */
  @IsString() @MinLength(16)
  HOST_REGISTRATION_TOKEN: string;

  /**
   * Key every sandbox's envd and traffic access tokens are derived from (HMAC-SHA256 of the sandbox id), so no token
   * is ever stored. Rotating it invalidates the tokens of running sandboxes.
   */
  @IsString() @MinLength(32)
  KILN_SANDBOX_TOKEN_KEY: string;

  /** A host whose last heartbeat is older than this is not placed on. */
  @IsInt() @Min(1)
  HOST_HEARTBEAT_TTL_SECONDS: number = 15;

  @IsInt() @Min(1)
  RECONCILE_INTERVAL_SECONDS: number = 30;
}

export class TemplateBuilderEnv extends RedisBackedEnv {
  @IsInt() @Min(1) @Max(65535)
  HTTP_PORT: number = 3002;

  @IsInt() @Min(1) @Max(16)
  BUILD_CONCURRENCY: number = 1;
}

export class HostMonitorEnv extends ControlPlaneEnv {
  @IsInt() @Min(1) @Max(65535)
  HTTP_PORT: number = 3003;

  @IsInt() @Min(1)
  HOST_HEARTBEAT_TTL_SECONDS: number = 15;
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
   * Unprivileged account every QEMU switches to once its devices are open; sandbox VMMs are also chrooted into an
   * empty directory and may not spawn. `root` keeps QEMU privileged (only its seccomp filter then).
   */
  @IsString() @Matches(/^[a-z_][a-z0-9_-]{0,31}$/, { message: 'KILN_VMM_USER must be a user name' })
  KILN_VMM_USER: string = 'kiln-vmm';
}

export class HostAgentEnv extends HostVmmEnv {
  @IsInt() @Min(1) @Max(65535)
  HTTP_PORT: number = 3004;

  @IsInt() @Min(1) @Max(65535)
  GRPC_PORT: number = 50051;

  /** Sandbox-traffic reverse proxy: `/{sandboxId}/{port}/...` or E2b-Sandbox-* headers. */
  @IsInt() @Min(1) @Max(65535)
  PROXY_PORT: number = 5007;

  /** Stable identity of this host; defaults to the machine's hostname. */
  @IsOptional() @IsString() @Matches(/^[a-zA-Z0-9._-]{1,63}$/)
  KILN_HOST_ID?: string;

  /** Address the control plane uses to reach this agent's gRPC and proxy ports. */
  @IsString() @MinLength(1)
  KILN_HOST_ADDRESS: string = '127.0.0.1';

  @IsString() @MinLength(16)
  HOST_REGISTRATION_TOKEN: string;

  /**
   * Key the secrets in this host's sandbox records (their envd tokens) are sealed with on disk (AES-256-GCM, HKDF).
   * Unset: derived from HOST_REGISTRATION_TOKEN; set it to rotate that token without losing running sandboxes.
   */
  @IsOptional() @IsString() @MinLength(32)
  KILN_HOST_STATE_KEY?: string;

  @IsIn(['auto', 'qcow2', 'reflink', 'copy'])
  KILN_ROOTFS_DRIVER: string = 'auto';

  /** Upper bound on live sandboxes on this host (also bounded by network slots). */
  @IsInt() @Min(1) @Max(4096)
  KILN_MAX_SANDBOXES: number = 32;

  /** Network slots kept ready ahead of demand. */
  @IsInt() @Min(0) @Max(256)
  KILN_NETWORK_PREFILL: number = 4;

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

  @IsInt() @Min(1)
  HEARTBEAT_INTERVAL_SECONDS: number = 5;
}
