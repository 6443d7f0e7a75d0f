import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { GatewayEnv, SchedulerEnv, loadConfig } from '@kiln/config';
import { DEFAULT_NETWORK_SETTINGS, SandboxNetworkSettings, SandboxState } from '@kiln/contracts';
import {
  ApiKeyRepository,
  PrismaService,
  SandboxRepository,
  TeamRepository,
  TemplateRepository,
  applyMigrations,
} from '@kiln/db';
import { natsServerOptions } from '@kiln/messaging';
import { startHttpService } from '@kiln/telemetry';
import { PrivateServer, freePort, startPrivateNats, startPrivateRedis } from '@kiln/testing';
import type { NestFastifyApplication } from '@nestjs/platform-fastify';
import { AppModule as SchedulerAppModule, SERVICE_NAME as SCHEDULER_SERVICE } from '../../../scheduler/src/app.module';
import { SandboxTokens } from '../../../scheduler/src/lifecycle/sandbox-tokens';
import { FleetPublishingHostRepository } from '../../../scheduler/test/support/fleet-hosts';
import { RunningGateway, startGateway } from '../../src/gateway';

/** The in-process scheduler's token key: tests derive a seeded sandbox's tokens with it (`stack.tokens`). */
export const GATEWAY_TEST_SANDBOX_TOKEN_KEY = 'gateway-test-sandbox-token-derivation-key';

const ADMIN_DATABASE_URL = process.env.KILN_TEST_DATABASE_ADMIN_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres';

export interface SeededTeam {
  teamId: string;
  apiKey: string;
}

export interface SeededSandboxOptions {
  teamId: string;
  proxyUrl: string;
  state?: SandboxState.Running | SandboxState.Paused;
  metadata?: Record<string, string>;
  network?: Partial<SandboxNetworkSettings>;
  /** Traffic resumes it while paused. */
  autoResume?: boolean;
  /** The host agent's gRPC address (default: nothing listens, so host calls fail fast). */
  hostAddress?: string;
}

/**
 * Everything the gateway talks to, private to one test file: a throwaway
 * Postgres database (migrated), its own nats-server (JetStream) and redis-server
 * on free ports — so no other engineer's scheduler on the shared NATS can answer
 * our requests — the real scheduler app in-process, and the real gateway.
 */
export class TestStack {
  readonly databaseName = `kiln_gateway_test_${process.pid}_${randomBytes(3).toString('hex')}`;
  databaseUrl: string;
  natsUrl: string;
  redisUrl: string;
  gateway: RunningGateway;
  scheduler?: NestFastifyApplication;
  prisma: PrismaService;
  teams: TeamRepository;
  apiKeys: ApiKeyRepository;
  templates: TemplateRepository;
  /** Registering a host here also puts it in the fleet view (the KV bucket the scheduler places from), as the host monitor would. */
  hosts: FleetPublishingHostRepository;
  sandboxes: SandboxRepository;
  /** Derives seeded sandboxes' envd and traffic tokens exactly as the scheduler does. */
  readonly tokens = new SandboxTokens({ KILN_SANDBOX_TOKEN_KEY: GATEWAY_TEST_SANDBOX_TOKEN_KEY } as SchedulerEnv);
  private nats?: PrivateServer;
  private redis?: PrivateServer;
  private extraGateways: RunningGateway[] = [];

  /** `gateway: false` leaves starting a gateway to the caller (e.g. a benchmark running it as its own process). */
  static async start(options: { scheduler?: boolean; gateway?: boolean } = {}): Promise<TestStack> {
    const stack = new TestStack();
    try {
      await stack.boot(options.scheduler ?? true, options.gateway ?? true);
    } catch (error) {
      await stack.stop();
      throw error;
    }
    return stack;
  }

  private async boot(withScheduler: boolean, withGateway: boolean): Promise<void> {
    const admin = new Client({ connectionString: ADMIN_DATABASE_URL });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${this.databaseName}`);
    await admin.end();
    const url = new URL(ADMIN_DATABASE_URL);
    url.pathname = `/${this.databaseName}`;
    this.databaseUrl = url.toString();
    await applyMigrations(this.databaseUrl);

    [this.nats, this.redis] = await Promise.all([startPrivateNats(), startPrivateRedis()]);
    this.natsUrl = this.nats.url;
    this.redisUrl = this.redis.url;

    this.prisma = new PrismaService(this.databaseUrl);
    this.teams = new TeamRepository(this.prisma);
    this.apiKeys = new ApiKeyRepository(this.prisma);
    this.templates = new TemplateRepository(this.prisma);
    this.hosts = new FleetPublishingHostRepository(this.prisma, this.natsUrl, () => (this.scheduler ? [this.scheduler] : []));
    this.sandboxes = new SandboxRepository(this.prisma);

    if (withScheduler) await this.startScheduler();
    if (withGateway) this.gateway = await this.startGateway();
  }

  async startScheduler(): Promise<void> {
    const env = loadConfig(SchedulerEnv, {
      HTTP_PORT: String(await freePort()),
      DATABASE_URL: this.databaseUrl,
      NATS_URL: this.natsUrl,
      REDIS_URL: this.redisUrl,
      KILN_SANDBOX_TOKEN_KEY: GATEWAY_TEST_SANDBOX_TOKEN_KEY,
      // Seeded hosts have no agent that could list their sandboxes: keep the reconciler from ending them mid-test.
      RECONCILE_INTERVAL_SECONDS: '3600',
      LOG_LEVEL: 'warn',
    });
    this.scheduler = await startHttpService(SchedulerAppModule.forRoot(env), {
      port: env.HTTP_PORT,
      host: '127.0.0.1',
      configure: (app) => {
        app.connectMicroservice(natsServerOptions(env.NATS_URL, SCHEDULER_SERVICE));
      },
    });
  }

  async stopScheduler(): Promise<void> {
    await this.scheduler?.close();
    this.scheduler = undefined;
  }

  async gatewayEnv(overrides: Record<string, string> = {}): Promise<GatewayEnv> {
    return loadConfig(GatewayEnv, {
      HTTP_PORT: String(await freePort()),
      SANDBOX_PROXY_PORT: String(await freePort()),
      KILN_DOMAIN: 'kiln.test',
      DATABASE_URL: this.databaseUrl,
      NATS_URL: this.natsUrl,
      REDIS_URL: this.redisUrl,
      NATS_REQUEST_TIMEOUT_MS: '5000',
      // As deployed: the gateway signs template upload URLs with a key derived from the scheduler's.
      KILN_SANDBOX_TOKEN_KEY: GATEWAY_TEST_SANDBOX_TOKEN_KEY,
      LOG_LEVEL: 'warn',
      ...overrides,
    });
  }

  /** Another gateway on the same infrastructure (e.g. with a tiny rate limit); stopped with the stack. */
  async startGateway(overrides: Record<string, string> = {}): Promise<RunningGateway> {
    const gateway = await startGateway(await this.gatewayEnv(overrides), { host: '127.0.0.1' });
    if (this.gateway) this.extraGateways.push(gateway);
    return gateway;
  }

  async seedTeam(name = `team-${randomBytes(4).toString('hex')}`): Promise<SeededTeam> {
    const team = await this.teams.ensure(name);
    const key = await this.apiKeys.create(team.id, 'test');
    return { teamId: team.id, apiKey: key.key };
  }

  async seedHost(proxyUrl: string, address = '127.0.0.1:1'): Promise<string> {
    const hostId = `host-${randomBytes(4).toString('hex')}`;
    await this.hosts.register({
      hostId,
      // By default nothing listens here: the scheduler's best-effort destroy calls fail fast.
      address,
      proxyUrl,
      acceleration: 'tcg',
      version: 'test',
      vcpus: 0,
      memoryMib: 0,
      sandboxes: 0,
      templates: [],
      readyCloneTemplates: [],
    });
    return hostId;
  }

  /** A sandbox record as the scheduler would have left it after placement on a host whose proxy is `proxyUrl`. */
  async seedSandbox(options: SeededSandboxOptions): Promise<string> {
    await this.templates.ensurePublicTemplate({
      templateId: 'base',
      alias: 'base',
      vcpus: 1,
      memoryMib: 256,
      diskMib: 1024,
      envdVersion: '0.6.4',
      contentHash: 'gateway-test',
    });
    const hostId = await this.seedHost(options.proxyUrl, options.hostAddress);
    const id = randomBytes(10).toString('hex');
    await this.sandboxes.createPending({
      id,
      teamId: options.teamId,
      templateId: 'base',
      alias: 'base',
      vcpus: 1,
      memoryMib: 256,
      diskMib: 1024,
      timeoutSeconds: 600,
      autoPause: false,
      autoResume: options.autoResume ?? false,
      metadata: options.metadata ?? {},
      network: { ...DEFAULT_NETWORK_SETTINGS, ...options.network },
      deadlineAt: new Date(Date.now() + 60_000),
    });
    await this.sandboxes.transition(id, [SandboxState.Pending], SandboxState.Starting, { hostId });
    await this.sandboxes.transition(id, [SandboxState.Starting], SandboxState.Running, {
      startedAt: new Date(),
      expiresAt: new Date(Date.now() + 600_000),
    });
    if (options.state === SandboxState.Paused) {
      await this.sandboxes.transition(id, [SandboxState.Running], SandboxState.Pausing, { deadlineAt: new Date(Date.now() + 60_000) });
      await this.sandboxes.transition(id, [SandboxState.Pausing], SandboxState.Paused);
    }
    return id;
  }

  async stop(): Promise<void> {
    for (const gateway of this.extraGateways) await gateway.close().catch(() => undefined);
    await this.gateway?.close().catch(() => undefined);
    await this.scheduler?.close().catch(() => undefined);
    await this.hosts?.close().catch(() => undefined);
    await this.prisma?.$disconnect().catch(() => undefined);
    await this.nats?.stop();
    await this.redis?.stop();
    const admin = new Client({ connectionString: ADMIN_DATABASE_URL });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${this.databaseName} WITH (FORCE)`);
    await admin.end();
  }
}
