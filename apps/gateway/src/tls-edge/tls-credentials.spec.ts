import 'reflect-metadata';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, GatewayEnv, loadConfig } from '@kiln/config';
import { TestCertificates, makeTestCertificates } from '../../test/support/test-certificates';
import { readTlsEdgeCredentials } from './tls-credentials';

const domain = 'kiln.localhost';
let certs: TestCertificates;
let otherCerts: TestCertificates;

beforeAll(() => {
  certs = makeTestCertificates(domain);
  otherCerts = makeTestCertificates('other.example');
});

afterAll(() => {
  certs?.remove();
  otherCerts?.remove();
});

const settings = (overrides: Partial<Record<'TLS_CERT_FILE' | 'TLS_KEY_FILE' | 'KILN_DOMAIN', string>> = {}) => ({
  TLS_CERT_FILE: certs.certFile,
  TLS_KEY_FILE: certs.keyFile,
  KILN_DOMAIN: domain,
  ...overrides,
});

function refusal(overrides: Parameters<typeof settings>[0]): string {
  try {
    readTlsEdgeCredentials(settings(overrides));
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error('the credentials were accepted');
}

describe('readTlsEdgeCredentials', () => {
  it('is off without a certificate', () => {
    expect(readTlsEdgeCredentials({ KILN_DOMAIN: domain })).toBeUndefined();
  });

  it('reads a certificate and key that cover api.{domain} and {port}-{id}.{domain}', () => {
    const credentials = readTlsEdgeCredentials(settings());
    expect(credentials?.names).toBe(`DNS:*.${domain}, DNS:${domain}`);
    expect(credentials?.notAfter.getTime()).toBeGreaterThan(Date.now());
    expect(credentials?.cert.toString()).toContain('BEGIN CERTIFICATE');
  });

  it('names the setting whose file is missing or unreadable', () => {
    expect(refusal({ TLS_CERT_FILE: join(certs.dir, 'missing.pem') })).toMatch(/^TLS_CERT_FILE cannot be read: ENOENT/);
    expect(refusal({ TLS_KEY_FILE: certs.dir })).toMatch(/^TLS_KEY_FILE cannot be read: EISDIR/);
  });

  it('names the setting whose file holds no PEM', () => {
    const junk = join(certs.dir, 'junk.pem');
    writeFileSync(junk, 'not a certificate\n');
    expect(refusal({ TLS_CERT_FILE: junk })).toMatch(/^TLS_CERT_FILE \(.*junk\.pem\) holds no PEM certificate/);
    expect(refusal({ TLS_KEY_FILE: junk })).toMatch(/^TLS_KEY_FILE \(.*junk\.pem\) holds no unencrypted PEM private key/);
  });

  it('refuses a key that is not the certificate\'s', () => {
    expect(refusal({ TLS_KEY_FILE: otherCerts.keyFile })).toMatch(/^TLS_KEY_FILE .* is not the private key of the certificate in TLS_CERT_FILE/);
  });

  it('refuses a certificate for another domain, naming KILN_DOMAIN', () => {
    expect(refusal({ TLS_CERT_FILE: otherCerts.certFile, TLS_KEY_FILE: otherCerts.keyFile })).toMatch(
      /does not cover api\.kiln\.localhost under KILN_DOMAIN kiln\.localhost: it names DNS:\*\.other\.example/,
    );
  });

  it('refuses a certificate that names the API host only (sandbox hosts need the wildcard)', () => {
    const apiOnly = makeTestCertificates(domain, { names: [`api.${domain}`] });
    try {
      expect(refusal({ TLS_CERT_FILE: apiOnly.certFile, TLS_KEY_FILE: apiOnly.keyFile })).toMatch(/does not cover 49983-0+\.kiln\.localhost/);
    } finally {
      apiOnly.remove();
    }
  });

  it('explains that a wildcard over one label (*.localhost) is refused by TLS clients', () => {
    const oneLabel = makeTestCertificates('localhost');
    try {
      expect(refusal({ TLS_CERT_FILE: oneLabel.certFile, TLS_KEY_FILE: oneLabel.keyFile, KILN_DOMAIN: 'localhost' })).toMatch(
        /does not cover api\.localhost .*use a domain of two labels or more, e\.g\. kiln\.localhost/,
      );
    } finally {
      oneLabel.remove();
    }
  });
});

describe('GatewayEnv TLS settings', () => {
  const base = { DATABASE_URL: 'postgresql://db:5432/kiln' };

  it('leave TLS off by default, on port 443 once configured', () => {
    const env = loadConfig(GatewayEnv, base);
    expect(env).toMatchObject({ TLS_PORT: 443 });
    expect(env.TLS_CERT_FILE).toBeUndefined();
    expect(loadConfig(GatewayEnv, { ...base, TLS_CERT_FILE: '/c.pem', TLS_KEY_FILE: '/k.pem', TLS_PORT: '8443' })).toMatchObject({ TLS_PORT: 8443 });
  });

  it('refuse a certificate without a key and a key without a certificate, naming the missing one', () => {
    expect(() => loadConfig(GatewayEnv, { ...base, TLS_CERT_FILE: '/c.pem' })).toThrow(/TLS_CERT_FILE is set, so TLS_KEY_FILE must be too/);
    expect(() => loadConfig(GatewayEnv, { ...base, TLS_KEY_FILE: '/k.pem' })).toThrow(/TLS_KEY_FILE is set, so TLS_CERT_FILE must be too/);
    expect(() => loadConfig(GatewayEnv, { ...base, TLS_CERT_FILE: '/c.pem', TLS_KEY_FILE: '/k.pem', TLS_PORT: '0' })).toThrow(/TLS_PORT/);
  });
});
