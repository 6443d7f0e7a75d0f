import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { GatewayEnv, HostAgentEnv, SchedulerEnv, loadConfig, placeholderSecretReason } from '../src';
import { IsString } from 'class-validator';
import { HasRealUrlPasswordInProduction, IsRealSecretInProduction } from '../src';

class SecretsEnv {
  @IsString()
  NODE_ENV = 'production';

  @IsRealSecretInProduction()
  TOKEN?: string;

  @HasRealUrlPasswordInProduction()
  REDIS_URL?: string;

  @HasRealUrlPasswordInProduction({ passwordOptional: true })
  DATABASE_URL?: string;
}

const REAL = randomBytes(24).toString('hex');

function problems(values: Partial<SecretsEnv>): string {
  try {
    loadConfig(SecretsEnv, values as NodeJS.ProcessEnv);
    return '';
  } catch (error) {
    return (error as Error).message;
  }
}

describe('placeholder secrets', () => {
  it.each([
    ['', 'is empty'],
    ['   ', 'is empty'],
    ['change-me', 'placeholder'],
    ['CHANGE_ME_please-0123456789', 'placeholder'],
    ['change-me-host-registration-token', 'placeholder'],
    ['changeme', 'placeholder'],
    ['replace-me', 'placeholder'],
    ['example-secret-value', 'placeholder'],
    ['secret', 'well-known'],
    ['Password1', 'well-known'],
    ['password', 'well-known'],
    ['aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'single character'],
    ['00000000000000000000000000000000', 'single character'],
    ['0123456789abcdef', 'consecutive'],
  ])('refuses %j (%s)', (value, why) => {
    expect(placeholderSecretReason(value)).toContain(why);
  });

  it('accepts generated secrets (the control)', () => {
    for (const value of [REAL, randomBytes(32).toString('base64url'), 'kR7vQ2mZp9wLx4tN8cYb3hJ6']) expect(placeholderSecretReason(value)).toBeUndefined();
  });
});

describe('secrets in production (NODE_ENV=production)', () => {
  it('names each variable holding a placeholder, and a URL without a password or with a placeholder one', () => {
    const message = problems({ TOKEN: 'change-me-token-0000', REDIS_URL: 'redis://redis:6379', DATABASE_URL: 'postgresql://kiln:change-me@db:5432/kiln' });
    expect(message).toMatch(/TOKEN is a placeholder \(contains "changeme"\)/);
    expect(message).toMatch(/REDIS_URL has no password/);
    expect(message).toMatch(/DATABASE_URL has a password that is a placeholder/);
    expect(problems({ TOKEN: REAL, REDIS_URL: 'redis://:secret@redis:6379', DATABASE_URL: `postgresql://kiln:${REAL}@db/kiln` })).toMatch(/REDIS_URL has a password that is a well-known default/);
  });

  it('accepts real secrets, and a Postgres URL without a password (certificate, peer or trust auth) (the control)', () => {
    expect(problems({ TOKEN: REAL, REDIS_URL: `redis://:${REAL}@redis:6379`, DATABASE_URL: `postgresql://kiln:${REAL}@db:5432/kiln` })).toBe('');
    expect(problems({ TOKEN: REAL, REDIS_URL: `redis://:${REAL}@redis:6379`, DATABASE_URL: 'postgresql://kiln@db/kiln?sslcert=/tls/tls.crt&sslkey=/tls/tls.key' })).toBe('');
    expect(problems({ TOKEN: REAL, REDIS_URL: 'redis://:@redis:6379', DATABASE_URL: 'postgresql://postgres@127.0.0.1:5432/kiln' })).toMatch(/^[^;]*REDIS_URL has no password[^;]*$/);
  });

  it("refuses the scheduler's and host agent's placeholder secrets by name, and accepts anything outside production", () => {
    const placeholders = {
      DATABASE_URL: 'postgresql://kiln:change-me@db:5432/kiln',
      REDIS_URL: 'redis://redis:6379',
      KILN_SANDBOX_TOKEN_KEY: 'change-me-sandbox-token-derivation-key',
      KILN_HOST_STATE_KEY: 'x'.repeat(40),
    };
    const scheduler = (() => {
      try {
        loadConfig(SchedulerEnv, { ...placeholders, NODE_ENV: 'production' });
        return '';
      } catch (error) {
        return (error as Error).message;
      }
    })();
    for (const name of ['DATABASE_URL', 'REDIS_URL', 'KILN_SANDBOX_TOKEN_KEY']) expect(scheduler).toContain(`${name} `);
    expect(() => loadConfig(HostAgentEnv, { ...placeholders, NODE_ENV: 'production' })).toThrow(/KILN_HOST_STATE_KEY repeats a single character/);

    // Control: the same values are fine in development and tests (the dev stack and test suites use readable values).
    expect(() => loadConfig(SchedulerEnv, { ...placeholders, NODE_ENV: 'development' })).not.toThrow();
  });
});

describe('gateway rate-limit settings', () => {
  const base = { DATABASE_URL: 'postgresql://db:5432/kiln' };

  it('takes TRUSTED_PROXIES as addresses or CIDR blocks (v4 and v6), empty by default, and names a bad entry', () => {
    expect(loadConfig(GatewayEnv, base).TRUSTED_PROXIES).toBe('');
    expect(loadConfig(GatewayEnv, { ...base, TRUSTED_PROXIES: '10.0.0.0/8, 192.0.2.7 ,fd00::/8' }).TRUSTED_PROXIES).toBe('10.0.0.0/8, 192.0.2.7 ,fd00::/8');
    for (const bad of ['10.0.0.0/33', 'proxy.internal', '10.0.0.0/8/1', 'fd00::/129']) {
      expect(() => loadConfig(GatewayEnv, { ...base, TRUSTED_PROXIES: bad })).toThrow(/TRUSTED_PROXIES must be a comma-separated list of at most 64 IP addresses or CIDR blocks/);
    }
  });

  it('fails closed unless RATE_LIMIT_FAIL_OPEN is true', () => {
    expect(loadConfig(GatewayEnv, base).RATE_LIMIT_FAIL_OPEN).toBe(false);
    expect(loadConfig(GatewayEnv, { ...base, RATE_LIMIT_FAIL_OPEN: 'true' }).RATE_LIMIT_FAIL_OPEN).toBe(true);
  });
});

describe('configuration errors', () => {
  it('never show a secret: secret variables by length, a URL password masked (other values are shown)', () => {
    let message = '';
    try {
      loadConfig(SchedulerEnv, {
        NODE_ENV: 'production',
        KILN_SANDBOX_TOKEN_KEY: 'Kq3-too-short',
        REDIS_URL: 'redis://:password@redis:6379',
        DATABASE_URL: 'postgresql://kiln:Secret1@db/kiln',
        HTTP_PORT: '70000',
      });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain('KILN_SANDBOX_TOKEN_KEY must be longer than or equal to 32 characters (got 13 characters, not shown)');
    expect(message).toContain('REDIS_URL has a password that is a well-known default');
    expect(message).toContain('(got "redis://:***@redis:6379")');
    expect(message).toContain('(got "postgresql://kiln:***@db/kiln")');
    for (const secret of ['Kq3-too-short', ':password@', 'Secret1']) expect(message).not.toContain(secret);
    // Control: an ordinary value is still shown.
    expect(message).toContain('(got "70000")');
  });
});
