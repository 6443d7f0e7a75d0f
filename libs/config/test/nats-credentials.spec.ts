import { randomBytes } from 'node:crypto';
import { ConfigError, GatewayEnv, HostAgentEnv, HostMonitorEnv, SchedulerEnv, TemplateBuilderEnv, loadConfig } from '../src';

const BASE = {
  DATABASE_URL: 'postgresql://db:5432/kiln',
  KILN_HOST_STATE_KEY: 'a-host-state-key-of-thirty-two-chars',
  KILN_SANDBOX_TOKEN_KEY: 'k'.repeat(32),
};
const CREDENTIALS = { NATS_USER: 'scheduler', NATS_PASSWORD: randomBytes(24).toString('base64url') };

/** The configuration problems loadConfig reports ('' when there are none). */
function problems(schema: new () => object, env: Record<string, string>): string {
  try {
    loadConfig(schema, env);
    return '';
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
}

describe('NATS credentials (NATS_USER / NATS_PASSWORD)', () => {
  it.each([
    ['SchedulerEnv', SchedulerEnv],
    ['GatewayEnv', GatewayEnv],
    ['HostMonitorEnv', HostMonitorEnv],
    ['TemplateBuilderEnv', TemplateBuilderEnv],
    ['HostAgentEnv', HostAgentEnv],
  ] as const)('%s refuses to start in production without them, naming each variable', (_name, schema) => {
    const missing = problems(schema as new () => object, { ...BASE, NODE_ENV: 'production' });
    expect(missing).toContain('NATS_USER is required in production');
    expect(missing).toContain('NATS_PASSWORD ');
    // Control: with both, neither is a problem (other production rules may still name theirs).
    const given = problems(schema as new () => object, { ...BASE, ...CREDENTIALS, NODE_ENV: 'production' });
    expect(given).not.toContain('NATS_USER');
    expect(given).not.toContain('NATS_PASSWORD');
  });

  it('refuses a placeholder password in production', () => {
    expect(problems(SchedulerEnv, { ...BASE, NATS_USER: 'scheduler', NATS_PASSWORD: 'change-me-nats', NODE_ENV: 'production' })).toMatch(/NATS_PASSWORD is a placeholder/);
  });

  it('is optional outside production (anonymous NATS), but takes both or neither', () => {
    expect(loadConfig(SchedulerEnv, BASE)).toMatchObject({ NATS_USER: undefined, NATS_PASSWORD: undefined });
    expect(loadConfig(SchedulerEnv, { ...BASE, ...CREDENTIALS })).toMatchObject(CREDENTIALS);
    expect(problems(SchedulerEnv, { ...BASE, NATS_USER: 'scheduler' })).toContain('NATS_PASSWORD is unset but NATS_USER is set');
    expect(problems(SchedulerEnv, { ...BASE, NATS_PASSWORD: CREDENTIALS.NATS_PASSWORD })).toContain('NATS_USER is unset but NATS_PASSWORD is set');
  });

  it('takes a CA file for TLS to NATS', () => {
    expect(loadConfig(SchedulerEnv, { ...BASE, NATS_TLS_CA_FILE: '/tls/nats-ca.pem' }).NATS_TLS_CA_FILE).toBe('/tls/nats-ca.pem');
  });
});
