import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import type { AgentOptions, ServerOptions } from 'node:https';
import type { PeerCertificate as TlsPeerCertificate } from 'node:tls';
import { ChannelCredentials, Metadata, ServerCredentials, ServerInterceptingCall, ServerInterceptor, credentials, status } from '@grpc/grpc-js';
import { ConfigError } from './load-config';

/**
 * mTLS of Kiln's internal plane: the host agent's gRPC and sandbox-traffic proxy answer only Kiln services holding a
 * certificate from the internal CA, and those services verify they reached a host agent.
 *
 * A service's identity is the SPIFFE ID in its certificate's URI SAN, `spiffe://kiln/<service>`, not its subject CN:
 * a URI SAN cannot be mistaken for a host name (CN and DNS SANs are what hostname verification reads, and the host
 * agent's certificate must carry its addresses there), it is the standard workload-identity form that cert-manager,
 * SPIRE and service meshes issue, and it is matched whole, so no CN spelling of "gateway" in some other CA's
 * certificate can pass. The CA is what vouches for the SAN: only certificates it signed get this far.
 */
export const INTERNAL_TRUST_DOMAIN = 'kiln';

export type InternalService = 'scheduler' | 'gateway' | 'host-agent' | 'template-builder';

/** `spiffe://kiln/<service>`: the URI SAN a service's internal certificate carries. */
export function spiffeIdOf(service: string): string {
  return `spiffe://${INTERNAL_TRUST_DOMAIN}/${service}`;
}

/** Paths of the PEM files, as the KILN_INTERNAL_* variables hold them. */
export interface InternalTlsFiles {
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** The internal CA bundle and this service's certificate chain and key. */
export interface InternalTlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

/** The variables every service with an internal certificate carries (see service-env.ts). */
export interface InternalTlsEnv {
  KILN_INTERNAL_CA_FILE?: string;
  KILN_INTERNAL_CERT_FILE?: string;
  KILN_INTERNAL_KEY_FILE?: string;
}

/** The configured files, or undefined when internal mTLS is off (allowed outside production only, see the env rules). */
export function internalTlsFilesOf(env: InternalTlsEnv): InternalTlsFiles | undefined {
  if (!env.KILN_INTERNAL_CA_FILE || !env.KILN_INTERNAL_CERT_FILE || !env.KILN_INTERNAL_KEY_FILE) return undefined;
  return { caFile: env.KILN_INTERNAL_CA_FILE, certFile: env.KILN_INTERNAL_CERT_FILE, keyFile: env.KILN_INTERNAL_KEY_FILE };
}

function readPem(variable: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new ConfigError(`${variable} (${path}) cannot be read: ${(error as Error).message}`);
  }
}

/**
 * Reads the PEM files and checks the certificate is one the CA signed and names a Kiln service, so a wrong mount
 * fails at start with the variable's name rather than as handshake errors on every call.
 */
export function loadInternalTls(files: InternalTlsFiles): InternalTlsMaterial {
  const material = {
    ca: readPem('KILN_INTERNAL_CA_FILE', files.caFile),
    cert: readPem('KILN_INTERNAL_CERT_FILE', files.certFile),
    key: readPem('KILN_INTERNAL_KEY_FILE', files.keyFile),
  };
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(material.cert);
  } catch (error) {
    throw new ConfigError(`KILN_INTERNAL_CERT_FILE (${files.certFile}) holds no PEM certificate: ${(error as Error).message}`);
  }
  if (!identityOfCertificate(certificate)) {
    throw new ConfigError(`KILN_INTERNAL_CERT_FILE (${files.certFile}) has no ${spiffeIdOf('<service>')} URI SAN`);
  }
  return material;
}

/** Loads the configured material, or undefined when internal mTLS is off. */
export function internalTlsOf(env: InternalTlsEnv): InternalTlsMaterial | undefined {
  const files = internalTlsFilesOf(env);
  return files ? loadInternalTls(files) : undefined;
}

const SPIFFE_PREFIX = spiffeIdOf('');

function identityOfSubjectAltName(subjectAltName: string | undefined): string | undefined {
  for (const entry of (subjectAltName ?? '').split(/,\s*/)) {
    if (!entry.startsWith('URI:')) continue;
    const uri = entry.slice('URI:'.length);
    if (uri.startsWith(SPIFFE_PREFIX) && /^[a-z0-9-]+$/.test(uri.slice(SPIFFE_PREFIX.length))) return uri.slice(SPIFFE_PREFIX.length);
  }
  return undefined;
}

/** The Kiln service a certificate names (`spiffe://kiln/<service>` URI SAN), or undefined. */
export function identityOfCertificate(certificate: X509Certificate | TlsPeerCertificate | undefined | null): string | undefined {
  if (!certificate) return undefined;
  if (certificate instanceof X509Certificate) return identityOfSubjectAltName(certificate.subjectAltName);
  return identityOfSubjectAltName((certificate as TlsPeerCertificate).subjectaltname);
}

/** Why a peer may not proceed, or undefined when its certificate names one of `allowed`. */
export function peerRefusal(certificate: TlsPeerCertificate | undefined | null, allowed: readonly InternalService[]): string | undefined {
  const identity = identityOfCertificate(certificate && Object.keys(certificate).length ? certificate : undefined);
  if (!identity) return `a client certificate naming ${allowed.map(spiffeIdOf).join(' or ')} is required`;
  if (!(allowed as readonly string[]).includes(identity)) return `${spiffeIdOf(identity)} may not call this service (allowed: ${allowed.map(spiffeIdOf).join(', ')})`;
  return undefined;
}

/**
 * Server-side check a client makes of the host agent it reached: the chain is verified against the internal CA by
 * TLS itself; this requires the SPIFFE ID. Host names are not matched: agents are reached by node IPs that come and
 * go, and the SPIFFE ID is what says "a Kiln host agent", whatever address it answered on.
 */
export function checkServerIdentityFor(expected: InternalService) {
  return (_hostname: string, certificate: TlsPeerCertificate): Error | undefined => {
    const identity = identityOfCertificate(certificate);
    return identity === expected ? undefined : new Error(`the server's certificate names ${identity ? spiffeIdOf(identity) : 'no Kiln service'}, not ${spiffeIdOf(expected)}`);
  };
}

/** gRPC server credentials: TLS with a client certificate from the internal CA required. */
export function grpcServerCredentials(material: InternalTlsMaterial): ServerCredentials {
  return ServerCredentials.createSsl(material.ca, [{ cert_chain: material.cert, private_key: material.key }], true);
}

/** gRPC channel credentials presenting this service's certificate and accepting only `expected`'s. */
export function grpcChannelCredentials(material: InternalTlsMaterial, expected: InternalService = 'host-agent'): ChannelCredentials {
  return credentials.createSsl(material.ca, material.key, material.cert, { checkServerIdentity: checkServerIdentityFor(expected) });
}

/**
 * A grpc-js server interceptor that ends every call whose client certificate does not name one of `allowed` with
 * PERMISSION_DENIED, before the handler sees it. (TLS already refused clients without a CA-signed certificate.)
 * `allowed` may depend on the method (its path, `/package.Service/Method`).
 */
export function grpcCallerInterceptor(allowed: readonly InternalService[] | ((methodPath: string) => readonly InternalService[])): ServerInterceptor {
  return (method, call) =>
    new ServerInterceptingCall(call, {
      start: (next) => {
        const refusal = peerRefusal(call.getAuthContext().sslPeerCertificate, typeof allowed === 'function' ? allowed(method.path) : allowed);
        if (!refusal) return next();
        next({
          onReceiveMetadata: (_metadata: Metadata) => call.sendStatus({ code: status.PERMISSION_DENIED, details: refusal }),
        });
      },
    });
}

/** HTTPS server options: the internal certificate, and a CA-signed client certificate required of every peer. */
export function httpsServerOptions(material: InternalTlsMaterial): ServerOptions {
  return { ca: material.ca, cert: material.cert, key: material.key, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' };
}

/** HTTPS agent options presenting this service's certificate and accepting only `expected`'s. */
export function httpsAgentOptions(material: InternalTlsMaterial, expected: InternalService = 'host-agent'): AgentOptions {
  return { ca: material.ca, cert: material.cert, key: material.key, checkServerIdentity: checkServerIdentityFor(expected) };
}
