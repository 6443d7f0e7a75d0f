import { ConfigError, HostMonitorEnv, loadConfig } from '../src';

const BASE = { DATABASE_URL: 'postgresql://db:5432/kiln', HOST_JOIN_TOKEN_KEY: 'j'.repeat(32) };

function problems(env: Record<string, string>): string {
  try {
    loadConfig(HostMonitorEnv, env);
    return '';
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
}

describe('HostMonitorEnv', () => {
  it('defaults to a 2 s heartbeat, unhealthy after 6 s, dead after 12 s, KV flush every second', () => {
    expect(loadConfig(HostMonitorEnv, BASE)).toMatchObject({
      HOST_HEARTBEAT_INTERVAL_SECONDS: 2,
      HOST_UNHEALTHY_AFTER_SECONDS: 6,
      HOST_DEAD_AFTER_SECONDS: 12,
      HOST_VIEW_FLUSH_MS: 1000,
      HOST_JOIN_TOKEN_MAX_TTL_SECONDS: 86400,
    });
  });

  it('requires interval < unhealthy < dead, naming the variables', () => {
    expect(problems({ ...BASE, HOST_HEARTBEAT_INTERVAL_SECONDS: '6' })).toContain('HOST_HEARTBEAT_INTERVAL_SECONDS (6) must be below HOST_UNHEALTHY_AFTER_SECONDS (6)');
    expect(problems({ ...BASE, HOST_DEAD_AFTER_SECONDS: '5' })).toContain('HOST_UNHEALTHY_AFTER_SECONDS (6) must be below HOST_DEAD_AFTER_SECONDS (5)');
    expect(problems({ ...BASE, HOST_HEARTBEAT_INTERVAL_SECONDS: '1', HOST_UNHEALTHY_AFTER_SECONDS: '2', HOST_DEAD_AFTER_SECONDS: '3' })).toBe('');
  });

  it('requires a join token key of at least 32 characters, and a real one in production', () => {
    expect(problems({ DATABASE_URL: BASE.DATABASE_URL })).toContain('HOST_JOIN_TOKEN_KEY');
    expect(problems({ ...BASE, HOST_JOIN_TOKEN_KEY: 'short' })).toContain('HOST_JOIN_TOKEN_KEY');
    expect(problems({ ...BASE, HOST_JOIN_TOKEN_KEY: 'change-me-change-me-change-me-change-me', NODE_ENV: 'production' })).toContain('HOST_JOIN_TOKEN_KEY');
  });
});
