import { Client } from 'pg';
import { SandboxState } from '@kiln/contracts';
import { PrismaService } from '../src/prisma.service';
import { SandboxRepository, type NewSandboxRecord } from '../src/repositories/sandbox.repository';
import { TEAM_LOCK_TRANSACTION, lockTeamAndCheckQuota, type TeamQuota } from '../src/repositories/team-quota';
import { TeamRepository } from '../src/repositories/team.repository';
import { TestDatabase, createTestDatabase } from '../src/testing/test-database';

const QUOTA: TeamQuota = { maxConcurrentSandboxes: 1_000, maxVcpus: 10_000, maxMemoryMib: 10_000_000, maxDiskMib: 10_000_000 };
const BURST = 40;
/** Short, so that waiting for a pooled connection behind a held team lock fails fast (production: 3 s). */
const TIMEOUTS = { connectTimeoutMs: 500, queryTimeoutMs: 10_000 };
/** How long another session holds the team's row lock while the burst arrives. */
const LOCK_HELD_MS = 1_500;

function sandbox(teamId: string, id: string): NewSandboxRecord {
  return {
    id,
    teamId,
    templateId: 'base',
    vcpus: 1,
    memoryMib: 512,
    diskMib: 1024,
    timeoutSeconds: 300,
    autoPause: false,
    metadata: {},
    network: { egress: { allowOut: [], denyOut: [] }, allowInternetAccess: null, allowPublicTraffic: true },
    deadlineAt: new Date(Date.now() + 60_000),
  };
}

/**
 * A burst of one team's creates while its row lock is held elsewhere (another replica's create, say), on a pool of 10
 * connections: the burst must not hold the pool, or everything else the process asks of the database times out.
 */
describe('a burst of one team’s quota-checked creates (real Postgres)', () => {
  let db: TestDatabase;
  let prisma: PrismaService;
  let teamId: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    prisma = new PrismaService(db.url, TIMEOUTS);
    teamId = (await new TeamRepository(prisma).ensure('burst')).id;
  });

  afterAll(async () => {
    await prisma?.$disconnect();
    await db?.drop();
  });

  /** Holds the team's row lock in a session of its own for LOCK_HELD_MS; resolves once it holds it. */
  async function holdTeamLock(): Promise<{ released: Promise<void> }> {
    const holder = new Client({ connectionString: db.url });
    await holder.connect();
    await holder.query('BEGIN');
    await holder.query('SELECT 1 FROM teams WHERE id = $1::uuid FOR UPDATE', [teamId]);
    const released = new Promise<void>((resolve) => setTimeout(resolve, LOCK_HELD_MS)).then(async () => {
      await holder.query('COMMIT');
      await holder.end();
    });
    return { released };
  }

  /** While the burst waits: does an unrelated query of the same process get a connection? */
  async function otherQueryDuringBurst(): Promise<string> {
    await new Promise((resolve) => setTimeout(resolve, 300));
    return prisma.$queryRaw`SELECT 1`.then(
      () => 'answered',
      (error: Error) => error.message,
    );
  }

  it('control: the same transactions without the per-team turn hold the whole pool, and other queries time out', async () => {
    const { released } = await holdTeamLock();
    const unqueued = Array.from({ length: BURST }, (_, i) =>
      prisma.$transaction(async (tx) => {
        await lockTeamAndCheckQuota(tx, sandbox(teamId, `ctl${i}`), QUOTA);
      }, TEAM_LOCK_TRANSACTION),
    );
    const other = await otherQueryDuringBurst();
    const results = await Promise.allSettled(unqueued);
    await released;
    expect(other).toMatch(/timeout/i);
    expect(results.filter((r) => r.status === 'rejected').length).toBeGreaterThan(0);
  });

  it('SandboxRepository queues them per team: every create succeeds and other queries still get a connection', async () => {
    const repository = new SandboxRepository(prisma);
    const { released } = await holdTeamLock();
    const creates = Array.from({ length: BURST }, (_, i) => repository.createPending(sandbox(teamId, `bst${i}`), QUOTA));
    const other = await otherQueryDuringBurst();
    const results = await Promise.allSettled(creates);
    await released;
    expect(other).toBe('answered');
    expect(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason))).toEqual([]);
    expect(await prisma.sandbox.count({ where: { teamId, id: { startsWith: 'bst' } } })).toBe(BURST);
  });

  it('quota-checked resumes queue with them: every paused sandbox resumes and other queries still get a connection', async () => {
    const repository = new SandboxRepository(prisma);
    for (let i = 0; i < BURST; i++) await repository.createPending(sandbox(teamId, `rsm${i}`));
    // Paused, as the scheduler's pause leaves them (the transitions there are not what this test is about).
    await prisma.sandbox.updateMany({ where: { teamId, id: { startsWith: 'rsm' } }, data: { state: SandboxState.Paused } });
    const { released } = await holdTeamLock();
    const resumes = Array.from({ length: BURST }, (_, i) =>
      repository.transition(`rsm${i}`, [SandboxState.Paused], SandboxState.Resuming, { quota: QUOTA, reason: 'resume requested' }),
    );
    const other = await otherQueryDuringBurst();
    const results = await Promise.allSettled(resumes);
    await released;
    expect(other).toBe('answered');
    expect(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason))).toEqual([]);
    expect(results.filter((r) => r.status === 'fulfilled' && r.value !== null)).toHaveLength(BURST);
    expect(await prisma.sandbox.count({ where: { teamId, id: { startsWith: 'rsm' }, state: SandboxState.Resuming } })).toBe(BURST);
  });
});
