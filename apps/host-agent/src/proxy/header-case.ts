import type { ClientRequest } from 'node:http';

/**
 * The canonical form of an HTTP header name, as Go's net/http writes every header (`x-access-token` →
 * `X-Access-Token`): the first letter and each one after a hyphen upper case, the rest lower case.
 */
export function canonicalHeaderName(name: string): string {
  return name.toLowerCase().replace(/(^|-)([a-z])/g, (_m, dash: string, letter: string) => dash + letter.toUpperCase());
}

/**
 * Rewrites a proxied request's header names to their canonical form before it is sent to the guest.
 *
 * Node hands a proxy its headers lower-cased, and writes them as named; E2B's edge is Go, which writes canonical
 * names. Header names are case-insensitive, but a server in the sandbox may show them as received (Python's
 * http.server does), and code written against E2B sees `Host:`, not `host:`.
 */
export function canonicaliseHeaderNames(request: ClientRequest): void {
  for (const name of request.getHeaderNames()) {
    const canonical = canonicalHeaderName(name);
    if (canonical === name) continue;
    const value = request.getHeader(name);
    if (value === undefined) continue;
    request.removeHeader(name);
    request.setHeader(canonical, value);
  }
}
