import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

const MAIN = join(__dirname, '..', 'dist', 'main.js');

function start(env: Record<string, string>) {
  const started = Date.now();
  const result = spawnSync('node', [MAIN], {
    env: { PATH: process.env.PATH, HTTP_PORT: '39871', LOG_LEVEL: 'silent', ...env },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { ...result, ms: Date.now() - started };
}

/** The built app, as deployed: bad configuration must fail fast with one clear line. */
describe('scheduler start-up with bad configuration', () => {
  it('names a missing variable and exits 78 without starting', () => {
    const result = start({ KILN_SANDBOX_TOKEN_KEY: 'a-sandbox-token-key-of-32-characters' });
    expect(result.status).toBe(78);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(/^scheduler: fatal: invalid configuration: DATABASE_URL must be a postgres\/postgresql URL \(unset\)/);
  });

  it('names a malformed variable', () => {
    const result = start({ DATABASE_URL: 'mysql://nope', KILN_SANDBOX_TOKEN_KEY: 'short' });
    expect(result.status).toBe(78);
    expect(result.stderr).toContain('DATABASE_URL must be a postgres/postgresql URL');
    expect(result.stderr).toContain('KILN_SANDBOX_TOKEN_KEY must be longer than or equal to 32 characters');
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('gives up on an unreachable database with one line, not a hang', () => {
    const result = start({
      DATABASE_URL: 'postgresql://postgres@127.0.0.1:1/kiln',
      KILN_SANDBOX_TOKEN_KEY: 'a-sandbox-token-key-of-32-characters',
    });
    expect(result.status).toBe(69);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(/^scheduler: fatal: Postgres at 127\.0\.0\.1:1 unavailable after \d+ attempts/);
    expect(result.ms).toBeLessThan(45_000);
  }, 60_000);

  it('gives up when NATS is down, with one line', () => {
    const result = start({
      DATABASE_URL: 'postgresql://postgres@127.0.0.1:5432/postgres',
      NATS_URL: 'nats://127.0.0.1:1',
      KILN_SANDBOX_TOKEN_KEY: 'a-sandbox-token-key-of-32-characters',
    });
    expect(result.status).toBe(69);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(/^scheduler: fatal: NATS at nats:\/\/127\.0\.0\.1:1 unavailable/);
  }, 60_000);
});
