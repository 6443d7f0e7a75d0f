import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from 'pg';

/** prisma/migrations at the repository root (SQL produced by `prisma migrate diff`). */
export const DEFAULT_MIGRATIONS_DIR = join(__dirname, '..', '..', '..', 'prisma', 'migrations');

// Arbitrary constant shared by every Kiln process so concurrent starts apply migrations once.
const MIGRATION_LOCK_KEY = 0x6b696c6e;

export interface MigrationResult {
  applied: string[];
  alreadyApplied: string[];
}

/**
 * Applies pending migrations in name order, each in its own transaction, under a
 * Postgres advisory lock. A migration whose file changed after it was applied is an
 * error: history is append-only.
 */
export async function applyMigrations(databaseUrl: string, dir = DEFAULT_MIGRATIONS_DIR): Promise<MigrationResult> {
  if (!existsSync(dir)) throw new Error(`migrations directory ${dir} does not exist`);
  const names = readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isDirectory() && existsSync(join(dir, e.name, 'migration.sql')))
    .map((e) => e.name)
    .sort();

  const client = new Client({ connectionString: databaseUrl, connectionTimeoutMillis: 5_000 });
  await client.connect();
  const result: MigrationResult = { applied: [], alreadyApplied: [] };
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
    await client.query(
      `CREATE TABLE IF NOT EXISTS "_kiln_migrations" (
         name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
    );
    const { rows } = await client.query<{ name: string; checksum: string }>('SELECT name, checksum FROM "_kiln_migrations"');
    const applied = new Map(rows.map((r) => [r.name, r.checksum]));
    for (const name of names) {
      const sql = readFileSync(join(dir, name, 'migration.sql'), 'utf8');
      const checksum = createHash('sha256').update(sql).digest('hex');
      const previous = applied.get(name);
      if (previous !== undefined) {
        if (previous !== checksum) throw new Error(`migration ${name} was modified after it was applied`);
        result.alreadyApplied.push(name);
        continue;
      }
      await client.query('BEGIN');
      try {
        await client.query(sql);
        await client.query('INSERT INTO "_kiln_migrations"(name, checksum) VALUES ($1, $2)', [name, checksum]);
        await client.query('COMMIT');
      } catch (error) {
        await client.query('ROLLBACK');
        throw new Error(`migration ${name} failed: ${error instanceof Error ? error.message : String(error)}`);
      }
      result.applied.push(name);
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]).catch(() => undefined);
    await client.end();
  }
  return result;
}
