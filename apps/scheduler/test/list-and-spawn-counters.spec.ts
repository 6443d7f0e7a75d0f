import 'reflect-metadata';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { INestApplicationContext } from '@nestjs/common';
import { DEFAULT_NETWORK_SETTINGS, ErrorCode, SandboxState } from '@kiln/contracts';
import { SchedulerEnv, loadConfig } from '@kiln/config';
import { PrismaService, TeamRepository, TemplateRepository } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import { ListSandboxesQuery, MessagingClient, SandboxPage, Subjects } from '@kiln/messaging';
import { PrivateServer, freePort, startPrivateNats, startPrivateRedis } from '@kiln/testing';
import { FakeHostAgent } from './support/fake-host-agent';
import { registerTestHost, testHostRecord } from './support/fleet-hosts';
import { startCaller, startScheduler } from './support/scheduler-app';

jest.setTimeout(60_000);

/** GET /v2/sandboxes as the scheduler answers it (filters and paging in the query), and template spawn counters. */
describe('sandbox list query and template spawn counters (real Postgres, Redis, NATS, a fake host agent)', () => {
  let db: TestDatabase;
  let nats: PrivateServer;
  let redis: PrivateServer;
  let host: FakeHostAgent;
  let scheduler: NestFastifyApplication;
  let caller: INestApplicationContext;
  let client: MessagingClient;
  let prisma: PrismaService;
  let teams: TeamRepository;

  beforeAll(async () => {
    [db, nats, redis] = await Promise.all([createTestDatabase(), startPrivateNats(), startPrivateRedis()]);
    host = new FakeHostAgent();
    await host.start();
    const env = loadConfig(SchedulerEnv, {
      DATABASE_URL: db.url,
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      KILN_SANDBOX_TOKEN_KEY: 'list-and-spawns-sandbox-token-key-0123456789',
      LOG_LEVEL: 'silent',
      HTTP_PORT: String(await freePort()),
      RECONCILE_INTERVAL_SECONDS: '3600',
    });
    scheduler = await startScheduler(env);
    caller = await startCaller(env.NATS_URL);
    client = caller.get(MessagingClient);
    prisma = scheduler.get(PrismaService);
    teams = scheduler.get(TeamRepository);
    await scheduler
      .get(TemplateRepository)
      .ensurePublicTemplate({ templateId: 'base', alias: 'base', vcpus: 1, memoryMib: 512, diskMib: 2048, envdVersion: '0.5.7', contentHash: 'list-and-spawns' });
  }, 60_000);

  afterAll(async () => {
    await caller?.close();
    await scheduler?.close();
    await host?.stop();
    await db?.drop();
    await nats?.stop();
    await redis?.stop();
  }, 60_000);

  /** A row as the scheduler leaves it once a create reached running (or later, paused), started at `startedAt`. */
  async function insertStarted(
    teamId: string,
    id: string,
    startedAt: Date,
    options: { state?: SandboxState; templateId?: string; metadata?: Record<string, string> } = {},
  ): Promise<void> {
    await prisma.sandbox.create({
      data: {
        id,
        teamId,
        templateId: options.templateId ?? 'base',
        state: options.state ?? SandboxState.Running,
        vcpus: 1,
        memoryMib: 512,
        diskMib: 2048,
        timeoutSeconds: 3600,
        createdAt: new Date(startedAt.getTime() - 500),
        startedAt,
        expiresAt: new Date(Date.now() + 3_600_000),
        metadata: options.metadata ?? {},
      },
    });
  }

  function list(query: ListSandboxesQuery): Promise<SandboxPage> {
    return client.request(Subjects.sandboxList, query, 5_000);
  }

  /** Every page of a list, following nextToken. */
  async function allPages(query: ListSandboxesQuery): Promise<string[][]> {
    const pages: string[][] = [];
    let nextToken: string | undefined;
    do {
      const page = await list({ ...query, nextToken });
      pages.push(page.sandboxes.map((s) => s.sandboxId));
      nextToken = page.nextToken;
    } while (nextToken && pages.length < 50);
    return pages;
  }

  describe('listing', () => {
    const t0 = Date.parse('2026-01-01T00:00:00.000Z');
    const at = (seconds: number) => new Date(t0 + seconds * 1000);
    let teamId: string;
    let otherTeamId: string;

    beforeAll(async () => {
      teamId = (await teams.ensure(`list-${db.name}`)).id;
      otherTeamId = (await teams.ensure(`list-other-${db.name}`)).id;
      await prisma.template.create({ data: { id: 'tmplown', teamId, aliases: { create: { alias: 'own-alias' } } } });
      await prisma.template.create({ data: { id: 'tmplforeign', teamId: otherTeamId, aliases: { create: { alias: 'foreign-alias' } } } });
      await insertStarted(teamId, 'sbxa', at(1), { metadata: { app: 'web' } });
      await insertStarted(teamId, 'sbxb', at(2));
      // Same start time as sbxb: the id breaks the tie.
      await insertStarted(teamId, 'sbxc', at(2), { metadata: { app: 'web' } });
      await insertStarted(teamId, 'sbxd', at(3));
      await insertStarted(teamId, 'sbxe', at(4), { state: SandboxState.Paused, metadata: { app: 'web' } });
      await insertStarted(teamId, 'sbxf', at(5), { templateId: 'tmplown' });
      // Never listed: a create still in flight, an ended sandbox, another team's sandbox.
      await prisma.sandbox.create({
        data: {
          id: 'sbxpending',
          teamId,
          templateId: 'base',
          state: SandboxState.Starting,
          vcpus: 1,
          memoryMib: 512,
          diskMib: 2048,
          timeoutSeconds: 60,
          expiresAt: new Date(Date.now() + 60_000),
          deadlineAt: new Date(Date.now() + 600_000),
        },
      });
      await insertStarted(teamId, 'sbxkilled', at(6), { state: SandboxState.Killed });
      await insertStarted(otherTeamId, 'sbxforeign', at(7));
    });

    it('orders newest first by default, the id ascending among equal start times (E2B)', async () => {
      const page = await list({ teamId, limit: 100 });
      expect(page.sandboxes.map((s) => s.sandboxId)).toEqual(['sbxf', 'sbxe', 'sbxd', 'sbxb', 'sbxc', 'sbxa']);
      expect(page.nextToken).toBeUndefined();
      expect(page.sandboxes[0].startedAt).toBe(at(5).toISOString());
    });

    it('orders oldest first with order=asc, the exact reverse', async () => {
      const page = await list({ teamId, limit: 100, order: 'asc' });
      expect(page.sandboxes.map((s) => s.sandboxId)).toEqual(['sbxa', 'sbxc', 'sbxb', 'sbxd', 'sbxe', 'sbxf']);
    });

    it('pages in either order, across pages, with nothing repeated or skipped', async () => {
      expect(await allPages({ teamId, limit: 2 })).toEqual([['sbxf', 'sbxe'], ['sbxd', 'sbxb'], ['sbxc', 'sbxa']]);
      expect(await allPages({ teamId, limit: 2, order: 'asc' })).toEqual([['sbxa', 'sbxc'], ['sbxb', 'sbxd'], ['sbxe', 'sbxf']]);
      // A page boundary inside a tie (sbxb and sbxc share a start time).
      expect(await allPages({ teamId, limit: 4 })).toEqual([['sbxf', 'sbxe', 'sbxd', 'sbxb'], ['sbxc', 'sbxa']]);
      expect(await allPages({ teamId, limit: 5, order: 'asc' })).toEqual([['sbxa', 'sbxc', 'sbxb', 'sbxd', 'sbxe'], ['sbxf']]);
    });

    it('keeps its place when sandboxes start while a caller pages', async () => {
      const pagingTeam = (await teams.ensure(`list-paging-${db.name}`)).id;
      for (const [i, id] of ['pg1', 'pg2', 'pg3', 'pg4'].entries()) await insertStarted(pagingTeam, id, at(i));

      const firstDesc = await list({ teamId: pagingTeam, limit: 2 });
      const firstAsc = await list({ teamId: pagingTeam, limit: 2, order: 'asc' });
      // Started meanwhile: one now (what a concurrent create looks like), and one tied with the last row of the
      // desc page (pg3), whose smaller id puts it before that row under desc and after it under asc.
      await insertStarted(pagingTeam, 'pgnew', new Date());
      await insertStarted(pagingTeam, 'pg0', at(2));

      // Newest first: whatever starts later lands before the first page, so the caller's pages are exactly what existed.
      const restDesc = await list({ teamId: pagingTeam, limit: 10, nextToken: firstDesc.nextToken });
      expect([...firstDesc.sandboxes, ...restDesc.sandboxes].map((s) => s.sandboxId)).toEqual(['pg4', 'pg3', 'pg2', 'pg1']);
      // Oldest first: new rows can only come after the cursor, so they are appended; nothing served is served again.
      const restAsc = await list({ teamId: pagingTeam, limit: 10, order: 'asc', nextToken: firstAsc.nextToken });
      expect([...firstAsc.sandboxes, ...restAsc.sandboxes].map((s) => s.sandboxId)).toEqual(['pg1', 'pg2', 'pg3', 'pg0', 'pg4', 'pgnew']);
      expect((await list({ teamId: pagingTeam, limit: 10 })).sandboxes.map((s) => s.sandboxId)).toEqual(['pgnew', 'pg4', 'pg0', 'pg3', 'pg2', 'pg1']);
    });

    it('refuses a token read under the other order, or one it did not issue, naming nextToken', async () => {
      const desc = await list({ teamId, limit: 2 });
      await expect(list({ teamId, limit: 2, order: 'asc', nextToken: desc.nextToken })).rejects.toMatchObject({
        code: ErrorCode.InvalidArgument,
        message: expect.stringContaining('nextToken'),
      });
      const legacy = Buffer.from(JSON.stringify({ c: at(1).toISOString(), i: 'sbxa' })).toString('base64url');
      for (const nextToken of ['forged', legacy]) {
        await expect(list({ teamId, limit: 2, nextToken })).rejects.toMatchObject({ code: ErrorCode.InvalidArgument, message: expect.stringContaining('nextToken') });
      }
    });

    it('filters by startedAfter, inclusively', async () => {
      const page = await list({ teamId, limit: 100, startedAfter: at(2).toISOString() });
      expect(page.sandboxes.map((s) => s.sandboxId)).toEqual(['sbxf', 'sbxe', 'sbxd', 'sbxb', 'sbxc']);
      const running = await list({ teamId, limit: 100, startedAfter: at(2).toISOString(), states: ['running'], order: 'asc' });
      expect(running.sandboxes.map((s) => s.sandboxId)).toEqual(['sbxc', 'sbxb', 'sbxd', 'sbxf']);
      expect((await list({ teamId, limit: 100, startedAfter: at(60).toISOString() })).sandboxes).toEqual([]);
    });

    it('filters by template id or alias; a template the team cannot see matches nothing', async () => {
      const ids = async (templateRef: string) => (await list({ teamId, limit: 100, templateRef })).sandboxes.map((s) => s.sandboxId);
      expect(await ids('tmplown')).toEqual(['sbxf']);
      expect(await ids('own-alias')).toEqual(['sbxf']);
      expect(await ids('base')).toEqual(['sbxe', 'sbxd', 'sbxb', 'sbxc', 'sbxa']);
      expect(await ids('foreign-alias')).toEqual([]);
      expect(await ids('tmplforeign')).toEqual([]);
      expect(await list({ teamId, limit: 100, templateRef: 'no-such-template' })).toEqual({ sandboxes: [], totalRunning: 0 });
    });

    it('combines filters with state and metadata, and counts running matches across pages', async () => {
      const page = await list({ teamId, limit: 1, metadata: { app: 'web' }, templateRef: 'base', order: 'asc' });
      expect(page.sandboxes.map((s) => s.sandboxId)).toEqual(['sbxa']);
      expect(page.totalRunning).toBe(2);
      expect((await list({ teamId, limit: 1 })).totalRunning).toBe(5);
      expect((await list({ teamId, limit: 100, states: ['paused'] })).totalRunning).toBeUndefined();
      expect((await list({ teamId, limit: 100, states: ['paused'], metadata: { app: 'web' } })).sandboxes.map((s) => s.sandboxId)).toEqual(['sbxe']);
    });
  });

  describe('template spawn counters, pause and resume', () => {
    let teamId: string;

    beforeAll(async () => {
      teamId = (await teams.ensure(`spawn-${db.name}`)).id;
      await registerTestHost(scheduler, testHostRecord('fake-host', host.address, { readyCloneTemplates: ['base'] }));
    });

    afterEach(() => {
      host.createFails = false;
    });

    const baseCounters = () => prisma.template.findUniqueOrThrow({ where: { id: 'base' }, select: { spawnCount: true, lastSpawnedAt: true } });
    const create = (extra: { autoPause?: boolean; autoPauseMemory?: boolean; autoResume?: boolean; requestKey?: string; templateRef?: string } = {}) =>
      client.request(
        Subjects.sandboxCreate,
        { teamId, templateRef: 'base', timeoutSeconds: 300, autoPause: false, network: DEFAULT_NETWORK_SETTINGS, metadata: {}, envVars: {}, ...extra },
        10_000,
      );

    it('moves spawnCount and lastSpawnedAt when a create reaches running, once per sandbox', async () => {
      const before = await baseCounters();
      const first = await create();
      const second = await create({ templateRef: 'base:latest' });
      const after = await baseCounters();
      expect(after.spawnCount - before.spawnCount).toBe(2n);
      expect(after.lastSpawnedAt?.toISOString()).toBe(second.startedAt);
      expect(Date.parse(second.startedAt)).toBeGreaterThanOrEqual(Date.parse(first.startedAt));
      // A retried create (same request key) answers with the first attempt's sandbox and counts nothing more.
      const keyed = await create({ requestKey: `${teamId}:spawn-once` });
      const retried = await create({ requestKey: `${teamId}:spawn-once` });
      expect(retried.sandboxId).toBe(keyed.sandboxId);
      expect((await baseCounters()).spawnCount - after.spawnCount).toBe(1n);
    });

    it('counts concurrent creates each', async () => {
      const before = await baseCounters();
      await Promise.all([create(), create(), create()]);
      expect((await baseCounters()).spawnCount - before.spawnCount).toBe(3n);
    });

    it('does not count a create that failed', async () => {
      const before = await baseCounters();
      host.createFails = true;
      await expect(create()).rejects.toMatchObject({ code: ErrorCode.Internal });
      expect(await baseCounters()).toEqual(before);
    });

    it('refuses autoResume with a disk-only pause at timeout before making anything (E2B: traffic never resumes one)', async () => {
      const before = await baseCounters();
      const rows = await prisma.sandbox.count({ where: { teamId } });
      await expect(create({ autoPause: true, autoPauseMemory: false, autoResume: true })).rejects.toMatchObject({
        code: ErrorCode.InvalidArgument,
        message: expect.stringContaining('autoPauseMemory'),
      });
      expect(await prisma.sandbox.count({ where: { teamId } })).toBe(rows);
      expect(await baseCounters()).toEqual(before);
    });
  });
});
