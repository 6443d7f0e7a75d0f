import 'reflect-metadata';
import { ConfigError, GatewayEnv, HostAgentEnv, SchedulerEnv, loadConfig } from '@kiln/config';

/** What a host agent must be given (its sealed-state key); nothing here reaches a host. */
const HOST_AGENT_REQUIRED = { KILN_HOST_STATE_KEY: 'deadline-chain-host-state-key-0123456789' };

const SCHEDULER_REQUIRED = {
  DATABASE_URL: 'postgresql://postgres@127.0.0.1:5432/postgres',
  KILN_SANDBOX_TOKEN_KEY: 'deadline-chain-sandbox-token-key-0123456789',
};

describe('the create deadline chain (one validated set of values)', () => {
  it('defaults to guest init < host create < gateway wait < host create + reconcile grace', () => {
    const env = loadConfig(SchedulerEnv, SCHEDULER_REQUIRED);
    expect(env.SANDBOX_GUEST_INIT_DEADLINE_MS).toBeLessThan(env.SANDBOX_HOST_CREATE_DEADLINE_MS);
    expect(env.SANDBOX_HOST_CREATE_DEADLINE_MS).toBeLessThan(env.SANDBOX_CREATE_TIMEOUT_MS);
    expect(env.SANDBOX_CREATE_TIMEOUT_MS).toBeLessThan(env.SANDBOX_HOST_CREATE_DEADLINE_MS + env.SANDBOX_RECONCILE_GRACE_MS);
    // The host agent reads its guest-init deadline from the same set.
    expect(loadConfig(HostAgentEnv, HOST_AGENT_REQUIRED).SANDBOX_GUEST_INIT_DEADLINE_MS).toBe(90_000);
  });

  it('refuses a scheduler deadline that outlives the gateway wait, naming both values', () => {
    const load = () => loadConfig(GatewayEnv, { ...SCHEDULER_REQUIRED, SANDBOX_HOST_CREATE_DEADLINE_MS: '250000' });
    expect(load).toThrow(ConfigError);
    expect(load).toThrow('SANDBOX_HOST_CREATE_DEADLINE_MS (250000) must be shorter than SANDBOX_CREATE_TIMEOUT_MS (200000)');
  });

  it('refuses a guest init longer than the host create, and a reconcile that would act while the gateway still waits', () => {
    expect(() => loadConfig(SchedulerEnv, { ...SCHEDULER_REQUIRED, SANDBOX_GUEST_INIT_DEADLINE_MS: '180000' })).toThrow(
      'SANDBOX_GUEST_INIT_DEADLINE_MS (180000) must be shorter than SANDBOX_HOST_CREATE_DEADLINE_MS (180000)',
    );
    expect(() => loadConfig(SchedulerEnv, { ...SCHEDULER_REQUIRED, SANDBOX_RECONCILE_GRACE_MS: '0' })).toThrow(
      'SANDBOX_CREATE_TIMEOUT_MS (200000) must be shorter than SANDBOX_HOST_CREATE_DEADLINE_MS + SANDBOX_RECONCILE_GRACE_MS (180000)',
    );
    expect(() => loadConfig(HostAgentEnv, { ...HOST_AGENT_REQUIRED, SANDBOX_GUEST_INIT_DEADLINE_MS: '300000' })).toThrow(
      /SANDBOX_GUEST_INIT_DEADLINE_MS \(300000\) must be shorter than SANDBOX_HOST_CREATE_DEADLINE_MS/,
    );
  });
});
