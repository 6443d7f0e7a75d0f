import { mkdtempSync, cpSync, appendFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { DEFAULT_MIGRATIONS_DIR, applyMigrations } from '../src/migrations';
import { TestDatabase, createTestDatabase } from '../src/testing/test-database';

async function tables(url: string): Promise<string[]> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ tablename: string }>("select tablename from pg_tables where schemaname = 'public' order by 1");
    return rows.map((r) => r.tablename);
  } finally {
    await client.end();
  }
}

describe('SQL migrations (real Postgres)', () => {
  let db: TestDatabase;

  beforeEach(async () => {
    db = await createTestDatabase({ migrate: false });
  });

  afterEach(async () => {
    await db.drop();
  });

  it('migrates an empty database to the full schema, then is a no-op', async () => {
    expect(await tables(db.url)).toEqual([]);
    const first = await applyMigrations(db.url);
    expect(first.applied.length).toBeGreaterThan(0);
    expect(await tables(db.url)).toEqual(
      expect.arrayContaining(['teams', 'api_keys', 'sandboxes', 'sandbox_events', 'templates', 'template_aliases', 'template_builds', 'snapshots', 'hosts', '_kiln_migrations']),
    );
    const second = await applyMigrations(db.url);
    expect(second.applied).toEqual([]);
    expect(second.alreadyApplied).toEqual(first.applied);
  });

  it('applies concurrently started migrations exactly once (advisory lock)', async () => {
    const results = await Promise.all([applyMigrations(db.url), applyMigrations(db.url), applyMigrations(db.url)]);
    const appliedCounts = results.map((r) => r.applied.length).sort();
    expect(appliedCounts[0]).toBe(0);
    expect(appliedCounts[1]).toBe(0);
    expect(appliedCounts[2]).toBeGreaterThan(0);
  });

  it('refuses a migration that was edited after it was applied', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-migrations-'));
    try {
      cpSync(DEFAULT_MIGRATIONS_DIR, dir, { recursive: true });
      await applyMigrations(db.url, dir);
      const [first] = (await import('node:fs')).readdirSync(dir).sort();
      appendFileSync(join(dir, first, 'migration.sql'), '\n-- edited\n');
      await expect(applyMigrations(db.url, dir)).rejects.toThrow(/modified after it was applied/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
