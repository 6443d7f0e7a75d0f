import 'reflect-metadata';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { INestApplicationContext } from '@nestjs/common';
import { DEFAULT_NETWORK_SETTINGS, ErrorCode, HTTP_STATUS_BY_ERROR_CODE, SandboxState } from '@kiln/contracts';
import { SchedulerEnv, loadConfig } from '@kiln/config';
import { PrismaService, TeamRepository, TemplateRepository } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import { MessagingClient, Subjects } from '@kiln/messaging';
import { PrivateServer, freePort, startPrivateNats, startPrivateRedis } from '@kiln/testing';
import { FakeHostAgent } from './support/fake-host-agent';
import { registerTestHost } from './support/fleet-hosts';
import { startCaller, startScheduler } from './support/scheduler-app';

jest.setTimeout(60_000);

/** Each sandbox of the 'base' template: 1 vCPU, 512 MiB. */
const BASE_VCPUS = 1;
const BASE_MEMORY_MIB = 512;

function createCommand(teamId: string, envVars: Record<string, string> = {}) {
  return { teamId, templateRef: 'base', timeoutSeconds: 300, autoPause: false, network: DEFAULT_NETWORK_SETTINGS, metadata: {}, envVars };
}

describe('team quotas and env vars at create (real Postgres, Redis, NATS, a fake host agent)', () => {
  let db: TestDatabase;
  let nats: PrivateServer;
  let redis: PrivateServer;
  let host: FakeHostAgent;
  let scheduler: NestFastifyApplication;
  let caller: INestApplicationContext;
  let client: MessagingClient;
  let teams: TeamRepository;
  let prisma: PrismaService;

  beforeAll(async () => {
    [db, nats, redis] = await Promise.all([createTestDatabase(), startPrivateNats(), startPrivateRedis()]);
    host = new FakeHostAgent();
    await host.start();
    const env = loadConfig(SchedulerEnv, {
      DATABASE_URL: db.url,
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      KILN_SANDBOX_TOKEN_KEY: 'quota-test-sandbox-token-key-0123456789abcdef',
      LOG_LEVEL: 'silent',
      HTTP_PORT: String(await freePort()),
      RECONCILE_INTERVAL_SECONDS: '3600',
      // Deployment defaults small enough to reach: 3 sandboxes, and memory for 4 of them.
      TEAM_MAX_CONCURRENT_SANDBOXES: '3',
      TEAM_MAX_VCPUS: '100',
      TEAM_MAX_MEMORY_MIB: String(4 * BASE_MEMORY_MIB),
    });
    scheduler = await startScheduler(env);
    caller = await startCaller(env.NATS_URL);
    client = caller.get(MessagingClient);
    teams = scheduler.get(TeamRepository);
    prisma = scheduler.get(PrismaService);
    await scheduler.get(TemplateRepository).ensurePublicTemplate({
      templateId: 'base',
      alias: 'base',
      vcpus: BASE_VCPUS,
      memoryMib: BASE_MEMORY_MIB,
      diskMib: 2048,
      envdVersion: '0.5.7',
      contentHash: 'quota-test',
    });
    await registerTestHost(scheduler, {
      hostId: 'fake-host',
      address: host.address,
      proxyUrl: 'http://127.0.0.1:1',
      acceleration: 'tcg',
      version: 'test',
      vcpus: 256,
      memoryMib: 1_048_576,
      sandboxes: 256,
      templates: ['base'],
      readyCloneTemplates: ['base'],
    });
  }, 60_000);

  afterAll(async () => {
    await caller?.close();
    await scheduler?.close();
    await host?.stop();
    await db?.drop();
    await nats?.stop();
    await redis?.stop();
  }, 60_000);

  async function newTeam(name: string): Promise<string> {
    return (await teams.ensure(`${name}-${db.name}`)).id;
  }

  function create(teamId: string, envVars?: Record<string, string>) {
    return client.request(Subjects.sandboxCreate, createCommand(teamId, envVars), 10_000);
  }

  async function countedSandboxes(teamId: string): Promise<number> {
    return prisma.sandbox.count({ where: { teamId, state: { in: [SandboxState.Pending, SandboxState.Starting, SandboxState.Running] } } });
  }

  it('refuses the create after the default concurrent-sandbox quota with quota_exceeded (HTTP 429), naming the limit; another team still creates', async () => {
    const full = await newTeam('full');
    for (let i = 0; i < 3; i++) await expect(create(full)).resolves.toMatchObject({ state: 'running' });

    const refused = await create(full).catch((error: unknown) => error);
    expect(refused).toMatchObject({ code: ErrorCode.QuotaExceeded, message: expect.stringMatching(/concurrent sandboxes: 3 in use \+ 1 requested .* limit of 3/) });
    expect(HTTP_STATUS_BY_ERROR_CODE[ErrorCode.QuotaExceeded]).toBe(429);
    expect(await countedSandboxes(full)).toBe(3);

    // Control: the quota is per team.
    const other = await newTeam('other');
    await expect(create(other)).resolves.toMatchObject({ state: 'running' });

    // A killed sandbox frees its slot.
    const [first] = await prisma.sandbox.findMany({ where: { teamId: full, state: SandboxState.Running }, take: 1 });
    await expect(client.request(Subjects.sandboxKill, { teamId: full, sandboxId: first.id }, 10_000)).resolves.toMatchObject({ killed: true });
    await expect(create(full)).resolves.toMatchObject({ state: 'running' });
  });

  it("applies the team's own overrides: memory and vCPUs name their limit, and a null override falls back to the default", async () => {
    const team = await newTeam('overrides');
    await teams.setQuota(team, { maxConcurrentSandboxes: 10, maxMemoryMib: BASE_MEMORY_MIB });
    await expect(create(team)).resolves.toMatchObject({ state: 'running' });
    await expect(create(team)).rejects.toMatchObject({ code: ErrorCode.QuotaExceeded, message: expect.stringContaining('memory (MiB): 512 in use + 512 requested') });

    await teams.setQuota(team, { maxMemoryMib: null, maxVcpus: BASE_VCPUS });
    await expect(create(team)).rejects.toMatchObject({ code: ErrorCode.QuotaExceeded, message: expect.stringContaining('vCPUs: 1 in use + 1 requested') });

    // Back to the defaults for vCPUs and memory (4 × 512 MiB), with its own 10 sandboxes: 3 more fit, the 5th is memory.
    await teams.setQuota(team, { maxVcpus: null });
    for (let i = 0; i < 3; i++) await expect(create(team)).resolves.toMatchObject({ state: 'running' });
    await expect(create(team)).rejects.toMatchObject({ code: ErrorCode.QuotaExceeded, message: expect.stringContaining('memory (MiB)') });
    expect(await countedSandboxes(team)).toBe(4);
  });

  it('lets concurrent creates at the edge through only up to the quota', async () => {
    const team = await newTeam('racing');
    await teams.setQuota(team, { maxConcurrentSandboxes: 5, maxMemoryMib: 100 * BASE_MEMORY_MIB });
    await expect(create(team)).resolves.toMatchObject({ state: 'running' });
    await expect(create(team)).resolves.toMatchObject({ state: 'running' });

    // 3 slots left, 8 creates at once: exactly 3 win, the rest are refused by the quota (never more than 5 counted).
    const outcomes = await Promise.allSettled(Array.from({ length: 8 }, () => create(team)));
    const won = outcomes.filter((o) => o.status === 'fulfilled');
    const refused = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
    expect(won).toHaveLength(3);
    expect(refused).toHaveLength(5);
    for (const r of refused) expect(r.reason).toMatchObject({ code: ErrorCode.QuotaExceeded });
    expect(await countedSandboxes(team)).toBe(5);
  });

  it('sends the env vars given at create to the host and keeps none of them in Postgres', async () => {
    const team = await newTeam('env');
    await teams.setQuota(team, { maxConcurrentSandboxes: 10 });
    const envVars = { SECRET_FROM_CREATE: 'do-not-store-me-4f1c', OTHER: 'visible-only-to-the-guest' };
    const view = (await create(team, envVars)) as { sandboxId: string };

    // The sandbox got them...
    expect(host.envVarsOf.get(view.sandboxId)).toEqual(envVars);
    // ...and the database has no column for them, nor any of their values anywhere in the row or its events.
    const columns = await prisma.$queryRaw<Array<{ column_name: string }>>`
      SELECT column_name::text AS column_name FROM information_schema.columns WHERE table_name = 'sandboxes'`;
    expect(columns.map((c) => c.column_name)).toEqual(expect.arrayContaining(['id', 'metadata']));
    expect(columns.map((c) => c.column_name)).not.toContain('env_vars');
    const [row] = await prisma.$queryRaw<Array<{ row: string }>>`SELECT row_to_json(s)::text AS row FROM sandboxes s WHERE id = ${view.sandboxId}`;
    expect(row.row).toContain(view.sandboxId);
    expect(row.row).not.toContain('do-not-store-me-4f1c');
    expect(row.row).not.toContain('visible-only-to-the-guest');
    const [events] = await prisma.$queryRaw<Array<{ events: string }>>`
      SELECT coalesce(string_agg(row_to_json(e)::text, ','), '') AS events FROM sandbox_events e WHERE sandbox_id = ${view.sandboxId}`;
    expect(events.events).toContain('running');
    expect(events.events).not.toContain('do-not-store-me-4f1c');
  });
});
