import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { ConfigError, GatewayEnv, HostAgentEnv, SchedulerEnv, loadConfig } from '../src';
import { identityOfCertificate, internalTlsOf, loadInternalTls, peerRefusal } from '../src/internal-tls';

const ROOT = join(__dirname, '..', '..', '..');
const SCHEDULER = { DATABASE_URL: 'postgresql://db:5432/kiln', KILN_SANDBOX_TOKEN_KEY: 'k'.repeat(32) };
const GATEWAY = { DATABASE_URL: 'postgresql://db:5432/kiln' };
const HOST_AGENT = { KILN_HOST_STATE_KEY: 'a-host-state-key-of-thirty-two-chars' };
const FILES = { KILN_INTERNAL_CA_FILE: '/tls/ca.pem', KILN_INTERNAL_CERT_FILE: '/tls/svc.pem', KILN_INTERNAL_KEY_FILE: '/tls/svc-key.pem' };

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

describe('internal mTLS settings', () => {
  it.each([
    ['SchedulerEnv', SchedulerEnv, SCHEDULER],
    ['GatewayEnv', GatewayEnv, GATEWAY],
    ['HostAgentEnv', HostAgentEnv, HOST_AGENT],
  ] as const)('%s refuses to start in production without them, naming each variable', (_name, schema, base) => {
    const missing = problems(schema as new () => object, { ...base, NODE_ENV: 'production' });
    for (const variable of Object.keys(FILES)) expect(missing).toContain(`${variable} is required in production`);
    // Control: with the three files, none of them is a problem (other production rules may still name theirs).
    const given = problems(schema as new () => object, { ...base, ...FILES, NODE_ENV: 'production' });
    expect(given).not.toMatch(/KILN_INTERNAL/);
  });

  it('takes all three or none outside production', () => {
    expect(internalTlsOf(loadConfig(SchedulerEnv, SCHEDULER))).toBeUndefined();
    expect(() => loadConfig(SchedulerEnv, { ...SCHEDULER, KILN_INTERNAL_CA_FILE: '/tls/ca.pem' })).toThrow(
      /KILN_INTERNAL_CERT_FILE is unset but KILN_INTERNAL_CA_FILE is set/,
    );
  });

  it('binds the host agent to KILN_HOST_ADDRESS unless GRPC_HOST/PROXY_HOST say otherwise', () => {
    const env = loadConfig(HostAgentEnv, { ...HOST_AGENT, GRPC_HOST: '0.0.0.0' });
    expect({ grpc: env.GRPC_HOST, proxy: env.PROXY_HOST, address: env.KILN_HOST_ADDRESS }).toEqual({ grpc: '0.0.0.0', proxy: undefined, address: '127.0.0.1' });
  });
});

describe('internal certificates (tools/stack/internal-tls.sh)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-internal-tls-'));
  const files = (service: string) => ({ caFile: join(dir, 'ca.pem'), certFile: join(dir, `${service}.pem`), keyFile: join(dir, `${service}-key.pem`) });

  beforeAll(() => execFileSync('bash', [join(ROOT, 'tools', 'stack', 'internal-tls.sh'), dir, '127.0.0.1,localhost', 'scheduler', 'host-agent']));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('names each service by its SPIFFE URI SAN, and the host agent by its addresses too', () => {
    const agent = new X509Certificate(loadInternalTls(files('host-agent')).cert);
    expect(identityOfCertificate(agent)).toBe('host-agent');
    expect(agent.subjectAltName).toBe('URI:spiffe://kiln/host-agent, IP Address:127.0.0.1, DNS:localhost');
    expect(agent.checkIssued(new X509Certificate(loadInternalTls(files('host-agent')).ca))).toBe(true);
    expect(identityOfCertificate(new X509Certificate(loadInternalTls(files('scheduler')).cert))).toBe('scheduler');
  });

  it('lets only the allowed identities through peerRefusal', () => {
    const scheduler = { subjectaltname: 'URI:spiffe://kiln/scheduler' } as never;
    expect(peerRefusal(scheduler, ['scheduler', 'gateway'])).toBeUndefined();
    expect(peerRefusal(scheduler, ['gateway'])).toMatch(/spiffe:\/\/kiln\/scheduler may not call this service/);
    expect(peerRefusal({ subjectaltname: 'URI:spiffe://other/gateway, DNS:gateway' } as never, ['gateway'])).toMatch(/certificate naming/);
    expect(peerRefusal({} as never, ['gateway'])).toMatch(/certificate naming spiffe:\/\/kiln\/gateway is required/);
  });

  it('refuses at load a file that is missing or holds no Kiln certificate, naming the variable', () => {
    expect(() => loadInternalTls({ ...files('scheduler'), keyFile: join(dir, 'missing.pem') })).toThrow(/KILN_INTERNAL_KEY_FILE .* cannot be read/);
    const notACertificate = join(dir, 'garbage.pem');
    writeFileSync(notACertificate, 'not a certificate');
    expect(() => loadInternalTls({ ...files('scheduler'), certFile: notACertificate })).toThrow(/KILN_INTERNAL_CERT_FILE .* holds no PEM certificate/);
    // The CA's own certificate is a valid PEM, but names no service.
    expect(() => loadInternalTls({ ...files('scheduler'), certFile: files('scheduler').caFile })).toThrow(/no spiffe:\/\/kiln\/<service> URI SAN/);
  });

  it('leaves a current set alone and keeps the keys private', () => {
    const before = execFileSync('stat', ['-c', '%a %Y %n', join(dir, 'ca-key.pem'), join(dir, 'scheduler-key.pem'), join(dir, 'scheduler.pem')], { encoding: 'utf8' });
    execFileSync('bash', [join(ROOT, 'tools', 'stack', 'internal-tls.sh'), dir, '127.0.0.1,localhost', 'scheduler', 'host-agent']);
    const after = execFileSync('stat', ['-c', '%a %Y %n', join(dir, 'ca-key.pem'), join(dir, 'scheduler-key.pem'), join(dir, 'scheduler.pem')], { encoding: 'utf8' });
    expect(after).toBe(before);
    expect(before.split('\n').slice(0, 2).map((line) => line.split(' ')[0])).toEqual(['600', '600']);
  });

  it('remakes the host agent certificate when its addresses change', () => {
    execFileSync('bash', [join(ROOT, 'tools', 'stack', 'internal-tls.sh'), dir, '127.0.0.1,localhost,10.9.8.7', 'host-agent']);
    expect(new X509Certificate(loadInternalTls(files('host-agent')).cert).subjectAltName).toContain('IP Address:10.9.8.7');
  });
});
