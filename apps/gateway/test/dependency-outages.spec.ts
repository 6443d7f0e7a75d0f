import 'reflect-metadata';
import { GatewayEnv, SchedulerEnv, loadConfig } from '@kiln/config';
import { ApiKeyRepository, PrismaService, TeamRepository } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import { natsServerOptions } from '@kiln/messaging';
import { startHttpService } from '@kiln/telemetry';
import { RestartableServer, eventually, freePort, startRestartableNats, startRestartableRedis } from '@kiln/testing';
import type { NestFastifyApplication } from '@nestjs/platform-fastify';
import { AppModule as SchedulerAppModule, SERVICE_NAME as SCHEDULER_SERVICE } from '../../scheduler/src/app.module';
import { RunningGateway, startGateway } from '../src/gateway';

/** What an outage may cost a caller at most: an answer, not a hang until the request timeout. */
const OUTAGE_ANSWER_WITHIN_MS = 5_000;

interface Answer {
  status: number;
  retryAfter: string | null;
  body: { code?: number; error_code?: string; message?: string; dependencies?: Record<string, { status: string }> };
  elapsedMs: number;
}

/** The real gateway and scheduler on private NATS and Redis the test stops and restarts on the same ports. */
describe('gateway during NATS and Redis outages', () => {
  let db: TestDatabase;
  let nats: RestartableServer;
  let redis: RestartableServer;
  let scheduler: NestFastifyApplication;
  let gateway: RunningGateway;
  let apiKey: string;

  beforeAll(async () => {
    [db, nats, redis] = await Promise.all([createTestDatabase(), startRestartableNats(), startRestartableRedis()]);
    const common = { DATABASE_URL: db.url, NATS_URL: nats.url, REDIS_URL: redis.url, LOG_LEVEL: 'silent' };
    const schedulerEnv = loadConfig(SchedulerEnv, {
      ...common,
      HTTP_PORT: String(await freePort()),
      KILN_SANDBOX_TOKEN_KEY: 'outage-test-sandbox-token-key-0123456789',
      RECONCILE_INTERVAL_SECONDS: '3600',
    });
    scheduler = await startHttpService(SchedulerAppModule.forRoot(schedulerEnv), {
      port: schedulerEnv.HTTP_PORT,
      host: '127.0.0.1',
      configure: (app) => {
        app.connectMicroservice(natsServerOptions(schedulerEnv.NATS_URL, SCHEDULER_SERVICE));
      },
    });
    const gatewayEnv = loadConfig(GatewayEnv, {
      ...common,
      HTTP_PORT: String(await freePort()),
      SANDBOX_PROXY_PORT: String(await freePort()),
      KILN_DOMAIN: 'kiln.test',
      // Long on purpose: an outage must be answered in seconds without waiting for any request timeout.
      NATS_REQUEST_TIMEOUT_MS: '60000',
    });
    gateway = await startGateway(gatewayEnv, { host: '127.0.0.1' });
    const prisma = scheduler.get(PrismaService);
    const team = await new TeamRepository(prisma).ensure(`outage-${db.name}`);
    apiKey = (await new ApiKeyRepository(prisma).create(team.id, 'outage-test')).key;
  }, 60_000);

  afterAll(async () => {
    await nats?.start().catch(() => undefined);
    await redis?.start().catch(() => undefined);
    // What this suite checks is the answers during outages, not shutdown. Under CI load the scheduler's close after
    // a NATS and a Redis restart once outlived the hook's 60 s (1 run in ~15 here, not reproduced with its shutdown
    // hooks traced): each close is bounded and a slow one is reported by name, so the rest of the teardown (the
    // database, the private servers) still happens and the report says where to look.
    await closeWithin('gateway', 15_000, () => gateway?.close());
    await closeWithin('scheduler', 15_000, () => scheduler?.close());
    await db?.drop();
    await nats?.dispose();
    await redis?.dispose();
    // Restarting two servers and closing two apps: seconds on a loaded CI machine, beyond the 5 s hook default.
  }, 60_000);

  async function closeWithin(what: string, ms: number, close: () => Promise<void> | undefined): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const slow = new Promise<'slow'>((resolve) => (timer = setTimeout(() => resolve('slow'), ms)));
    const outcome = await Promise.race([Promise.resolve(close()).then(() => 'closed' as const), slow]).finally(() => clearTimeout(timer));
    if (outcome === 'slow') process.stderr.write(`dependency-outages teardown: the ${what} did not close within ${ms} ms; left to --forceExit\n`);
  }

  async function call(url: string, init: RequestInit = {}): Promise<Answer> {
    const started = Date.now();
    const response = await fetch(url, { ...init, headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json', ...(init.headers ?? {}) }, signal: AbortSignal.timeout(20_000) });
    const text = await response.text();
    return { status: response.status, retryAfter: response.headers.get('retry-after'), body: text ? JSON.parse(text) : {}, elapsedMs: Date.now() - started };
  }

  const listSandboxes = () => call(`${gateway.apiUrl}/v2/sandboxes`);
  const health = () => call(`${gateway.apiUrl}/health`);

  function expectOutageAnswer(answer: Answer): void {
    expect(answer.status).toBe(503);
    expect(answer.body.error_code).toBe('unavailable');
    expect(Number(answer.retryAfter)).toBeGreaterThan(0);
    expect(answer.elapsedMs).toBeLessThan(OUTAGE_ANSWER_WITHIN_MS);
  }

  it('answers normally while everything is up', async () => {
    expect((await listSandboxes()).status).toBe(200);
    expect((await health()).status).toBe(200);
  });

  it('with NATS down answers 503 + Retry-After in seconds (API and traffic), /health names nats, and recovers without a restart', async () => {
    await nats.stop();
    try {
      expectOutageAnswer(await listSandboxes());
      expectOutageAnswer(await call(`${gateway.apiUrl}/sandboxes`, { method: 'POST', body: JSON.stringify({ templateID: 'base' }) }));
      const traffic = await call(`${gateway.sandboxUrl}/health`, { headers: { 'E2b-Sandbox-Id': 'abcdefabcdefabcdefab', 'E2b-Sandbox-Port': '49983' } });
      expectOutageAnswer(traffic);
      const report = await health();
      expect(report.status).toBe(503);
      expect(report.body.dependencies?.nats.status).toBe('down');
      expect(report.body.dependencies?.postgres.status).toBe('up');
      expect(report.elapsedMs).toBeLessThan(OUTAGE_ANSWER_WITHIN_MS);
    } finally {
      await nats.start();
    }
    await eventually('the API to answer again after NATS is back', async () => (await listSandboxes()).status === 200, { timeoutMs: 30_000, intervalMs: 500 });
    await eventually('/health to be ok again', async () => (await health()).status === 200, { timeoutMs: 15_000 });
  }, 60_000);

  it('with Redis down refuses the API with 503 + Retry-After without delay (rate limit fails closed), /health names redis, and recovers', async () => {
    await redis.stop();
    try {
      const answer = await listSandboxes();
      expectOutageAnswer(answer);
      expect(answer.body).toMatchObject({ code: 503, message: expect.stringContaining('rate limiting is unavailable') });
      const report = await health();
      expect(report.status).toBe(503);
      expect(report.body.dependencies?.redis.status).toBe('down');
      expect(report.elapsedMs).toBeLessThan(OUTAGE_ANSWER_WITHIN_MS);
    } finally {
      await redis.start();
    }
    await eventually('/health to be ok again after Redis is back', async () => (await health()).status === 200, { timeoutMs: 20_000, intervalMs: 500 });
    await eventually('the API to answer again after Redis is back', async () => (await listSandboxes()).status === 200, { timeoutMs: 20_000, intervalMs: 500 });
  }, 60_000);
});
