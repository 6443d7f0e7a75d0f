import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { checkServerIdentity, createSecureContext } from 'node:tls';
import { ConfigError, GatewayEnv } from '@kiln/config';
import { API_HOST_LABEL } from './edge-host';
import { ENVD_PORT } from '../traffic/sandbox-address';

/** The certificate chain and key the TLS listener serves, read and checked once per (re)load. */
export interface TlsEdgeCredentials {
  cert: Buffer;
  key: Buffer;
  /** When the leaf certificate stops being valid. */
  notAfter: Date;
  /** The leaf's subjectAltName, for the start-up log line. */
  names: string;
}

export type TlsEdgeSettings = Pick<GatewayEnv, 'TLS_CERT_FILE' | 'TLS_KEY_FILE' | 'KILN_DOMAIN'>;

/** The first line of an error's message (Node's fs errors can come from another realm, so no `instanceof Error`). */
function describe(error: unknown): string {
  const message = typeof error === 'object' && error !== null && 'message' in error ? String(error.message) : String(error);
  return message.split('\n')[0];
}

function readSetting(setting: 'TLS_CERT_FILE' | 'TLS_KEY_FILE', path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new ConfigError(`${setting} cannot be read: ${describe(error)}`);
  }
}

/**
 * Reads the operator's certificate and key for the TLS listener, or undefined when TLS_CERT_FILE is unset (the
 * listener is off). Everything a client would trip over later is refused now, naming the setting: a file that
 * cannot be read, one that is not PEM, a key that is not the certificate's, and a certificate that does not cover
 * `api.{KILN_DOMAIN}` and `{port}-{sandboxId}.{KILN_DOMAIN}` by Node's own host-name check (the one the SDK's TLS
 * client applies). An expired certificate is not refused, only reported: the plain-HTTP listeners still work.
 */
export function readTlsEdgeCredentials(env: TlsEdgeSettings): TlsEdgeCredentials | undefined {
  if (!env.TLS_CERT_FILE || !env.TLS_KEY_FILE) return undefined;
  const cert = readSetting('TLS_CERT_FILE', env.TLS_CERT_FILE);
  const key = readSetting('TLS_KEY_FILE', env.TLS_KEY_FILE);
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch (error) {
    throw new ConfigError(`TLS_CERT_FILE (${env.TLS_CERT_FILE}) holds no PEM certificate: ${describe(error)}`);
  }
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    throw new ConfigError(`TLS_KEY_FILE (${env.TLS_KEY_FILE}) holds no unencrypted PEM private key: ${describe(error)}`);
  }
  if (!leaf.checkPrivateKey(privateKey)) {
    throw new ConfigError(`TLS_KEY_FILE (${env.TLS_KEY_FILE}) is not the private key of the certificate in TLS_CERT_FILE (${env.TLS_CERT_FILE})`);
  }
  try {
    createSecureContext({ cert, key });
  } catch (error) {
    throw new ConfigError(`TLS_CERT_FILE and TLS_KEY_FILE do not make a usable TLS context: ${describe(error)}`);
  }
  if (!leaf.subjectAltName) throw new ConfigError(`TLS_CERT_FILE (${env.TLS_CERT_FILE}) has no subjectAltName: clients match host names against it only`);
  const domain = env.KILN_DOMAIN.toLowerCase();
  const sampleSandboxHost = `${ENVD_PORT}-${'0'.repeat(20)}.${domain}`;
  for (const name of [`${API_HOST_LABEL}.${domain}`, sampleSandboxHost]) {
    const mismatch = checkServerIdentity(name, { subject: {}, subjectaltname: leaf.subjectAltName } as Parameters<typeof checkServerIdentity>[1]);
    if (mismatch) {
      const hint = domain.includes('.') ? '' : ` (TLS clients refuse a wildcard over a single label such as *.${domain}: use a domain of two labels or more, e.g. kiln.${domain})`;
      throw new ConfigError(`TLS_CERT_FILE (${env.TLS_CERT_FILE}) does not cover ${name} under KILN_DOMAIN ${domain}: it names ${leaf.subjectAltName}${hint}`);
    }
  }
  return { cert, key, notAfter: new Date(leaf.validTo), names: leaf.subjectAltName };
}
