import { SANDBOX_ID_HEADER, SANDBOX_PORT_HEADER, SandboxAddress, sandboxAddressOf } from '../traffic/sandbox-address';

/** The label of the REST API's host under the domain: E2B SDKs call `https://api.{E2B_DOMAIN}`. */
export const API_HOST_LABEL = 'api';

/** What a name under the domain is served by on the TLS listener. */
export type EdgeRoute = { kind: 'api' } | { kind: 'sandbox'; address: SandboxAddress };

/** A request the TLS listener answers itself, before any handler sees it. */
export interface EdgeRefusal {
  status: 400 | 404 | 421;
  message: string;
}

export interface EdgeRequest {
  /** The TLS server name (SNI) the connection was opened with; falsy when the client sent none. */
  servername: string | false | null | undefined;
  url: string | undefined;
  headers: Record<string, string | string[] | undefined>;
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/**
 * A host name as compared here: lower case, without a port or the trailing dot of an absolute name. An IPv6
 * literal (`[::1]:443`) keeps its brackets, so it can never look like a name under the domain.
 */
export function normalizedHostName(value: string): string {
  const name = value.trim().toLowerCase();
  const withoutPort = name.startsWith('[') ? name.replace(/(\])(:\d+)?$/, '$1') : name.replace(/:\d+$/, '');
  return withoutPort.replace(/\.$/, '');
}

/**
 * Which handler serves `hostName` under `domain`: `api.{domain}` the REST API, `{port}-{sandboxId}.{domain}` the
 * sandbox-traffic handler (parsed by the traffic handler's own function, so both agree on what a sandbox host is).
 * Anything else, the bare domain included, is served by nothing.
 */
export function edgeRouteOf(hostName: string, domain: string): EdgeRoute | undefined {
  const name = normalizedHostName(hostName);
  const suffix = `.${domain.toLowerCase()}`;
  if (name === `${API_HOST_LABEL}${suffix}`) return { kind: 'api' };
  const parsed = sandboxAddressOf({ host: name }, domain);
  return parsed.ok ? { kind: 'sandbox', address: parsed.address } : undefined;
}

/** Exposed on the internal HTTP port for scrapers; the public TLS listener does not serve it (no API key guards it). */
const INTERNAL_API_PATHS: ReadonlySet<string> = new Set(['/metrics']);

/**
 * The path as a router could come to see it: percent-decoded, case-folded, duplicate and trailing slashes gone.
 * Only used to recognise internal paths, so over-matching costs nothing.
 */
function looselyNormalizedPath(url: string): string {
  const path = url.split('?', 1)[0];
  let decoded = path;
  try {
    decoded = decodeURIComponent(path);
  } catch {
    // A malformed escape: the router refuses it anyway; compare the raw path.
  }
  return decoded.toLowerCase().replace(/\/{2,}/g, '/').replace(/(.)\/$/, '$1');
}

/**
 * Where one request on the TLS listener goes. Every request of a keep-alive connection is checked on its own: its
 * Host must be the name the connection was opened for (SNI), so one connection can never reach another sandbox,
 * or the API, by changing the Host (421, which tells a client to retry on a connection of its own). A sandbox
 * request's E2b-Sandbox-Id/-Port headers, which the traffic handler prefers over the Host, must agree with it.
 */
export function edgeRequestRoute(req: EdgeRequest, domain: string): { route: EdgeRoute } | { refusal: EdgeRefusal } {
  if (!req.servername) {
    return { refusal: { status: 421, message: `send the TLS server name (SNI): api.${domain} or {port}-{sandboxId}.${domain}` } };
  }
  const serverName = normalizedHostName(req.servername);
  const hostHeader = single(req.headers.host);
  if (!hostHeader) return { refusal: { status: 400, message: 'the request has no Host header' } };
  const host = normalizedHostName(hostHeader);
  if (host !== serverName) {
    return { refusal: { status: 421, message: `host ${host} does not match the TLS server name ${serverName}: open a connection for it` } };
  }
  const url = req.url ?? '/';
  // Absolute-form targets (`GET https://other/ HTTP/1.1`) name a host of their own (only proxies need them), and
  // neither handler serves `OPTIONS *`.
  if (!url.startsWith('/')) {
    return { refusal: { status: 400, message: 'the request target must be a path' } };
  }
  const route = edgeRouteOf(host, domain);
  // The handshake already refused names served by nothing; this holds if SNI and Host agree on such a name anyway.
  if (!route) return { refusal: { status: 421, message: `${host} is not served here: use api.${domain} or {port}-{sandboxId}.${domain}` } };
  if (route.kind === 'api') {
    if (INTERNAL_API_PATHS.has(looselyNormalizedPath(url))) return { refusal: { status: 404, message: 'not found' } };
    return { route };
  }
  const idHeader = single(req.headers[SANDBOX_ID_HEADER])?.trim();
  const portHeader = single(req.headers[SANDBOX_PORT_HEADER])?.trim();
  if ((idHeader !== undefined && idHeader !== route.address.sandboxId) || (portHeader !== undefined && portHeader !== String(route.address.port))) {
    return {
      refusal: {
        status: 400,
        message: `${SANDBOX_ID_HEADER}/${SANDBOX_PORT_HEADER} name another sandbox or port than the host ${host}: send matching headers or none`,
      },
    };
  }
  return { route };
}
