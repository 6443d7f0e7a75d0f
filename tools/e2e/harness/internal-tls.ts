import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { existsSync, readFileSync } from 'node:fs';
import { InternalTlsFiles, checkServerIdentityFor, httpsAgentOptions, loadInternalTls } from '@kiln/config/internal-tls';
import { Agent as UndiciAgent, fetch as undiciFetch } from 'undici';

/** Beside this file in the repository; a bundled copy (tools/bench) finds the repository from KILN_ROOT or the cwd. */
const SCRIPT = [join(__dirname, '..', '..', 'stack', 'internal-tls.sh'), join(process.env.KILN_ROOT ?? process.cwd(), 'tools', 'stack', 'internal-tls.sh')].find(
  (path) => existsSync(path),
) ?? 'tools/stack/internal-tls.sh';

/** The services of a test stack that hold internal certificates (see libs/config/src/internal-tls.ts). */
export const INTERNAL_TLS_SERVICES = ['scheduler', 'gateway', 'host-agent', 'template-builder'] as const;

/**
 * Makes a test stack's internal CA and service certificates in `dir` with the same script `npm run up` uses
 * (tools/stack/internal-tls.sh), plus any `extra` services (a suite's wrong-identity probes). `hostAgentAddresses`
 * are the host-agent certificate's address SANs (a fleet's agents are at addresses of their own). The stack's run
 * folder owns them: startStack empties it on every start.
 */
export function makeInternalTls(dir: string, extra: string[] = [], hostAgentAddresses: string[] = ['127.0.0.1', 'localhost']): void {
  execFileSync('bash', [SCRIPT, dir, hostAgentAddresses.join(','), ...INTERNAL_TLS_SERVICES, ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** The PEM files of `service`'s certificate in a directory makeInternalTls filled. */
export function internalTlsFiles(dir: string, service: string): InternalTlsFiles {
  return { caFile: join(dir, 'ca.pem'), certFile: join(dir, `${service}.pem`), keyFile: join(dir, `${service}-key.pem`) };
}

/** The KILN_INTERNAL_* variables that give an app `service`'s certificate. */
export function internalTlsEnv(dir: string, service: string): Record<string, string> {
  const files = internalTlsFiles(dir, service);
  return { KILN_INTERNAL_CA_FILE: files.caFile, KILN_INTERNAL_CERT_FILE: files.certFile, KILN_INTERNAL_KEY_FILE: files.keyFile };
}

/**
 * A fetch dispatcher (undici) that reaches a host agent's proxy directly as the gateway does: presenting the
 * gateway's certificate (or `service`'s; null: none), trusting only a host agent's. Pass it as `dispatcher` to
 * undici's fetch.
 */
export function hostProxyDispatcher(dir: string, service: string | null = 'gateway'): UndiciAgent {
  if (service === null) {
    return new UndiciAgent({ connect: { ca: readFileSync(internalTlsFiles(dir, 'host-agent').caFile), checkServerIdentity: checkServerIdentityFor('host-agent') } });
  }
  const options = httpsAgentOptions(loadInternalTls(internalTlsFiles(dir, service)), 'host-agent');
  return new UndiciAgent({ connect: { ca: options.ca, cert: options.cert, key: options.key, checkServerIdentity: options.checkServerIdentity } });
}

/** node https request options with `service`'s certificate, for clients (Connect) that take node options. */
export function hostProxyRequestOptions(dir: string, service = 'gateway') {
  return httpsAgentOptions(loadInternalTls(internalTlsFiles(dir, service)), 'host-agent');
}

/**
 * fetch for a host agent's proxy directly, as the gateway reaches it (hostProxyDispatcher); `close` ends its
 * connections. URLs that are not https go through the global fetch unchanged.
 */
export function hostProxyFetch(dir: string, service: string | null = 'gateway'): { fetch: typeof fetch; close: () => Promise<void> } {
  const dispatcher = hostProxyDispatcher(dir, service);
  const fetchThrough = ((input: string | URL, init?: RequestInit) =>
    String(input).startsWith('https:')
      ? undiciFetch(input, { ...(init as object), dispatcher } as Parameters<typeof undiciFetch>[1])
      : fetch(input, init)) as unknown as typeof fetch;
  return { fetch: fetchThrough, close: () => dispatcher.close() };
}
