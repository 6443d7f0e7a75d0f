import { ACCESS_TOKEN_HEADER, ENVD_PORT, rejectSignedFilesUrl, tokensEqual } from '../guest/envd-auth';
import { maskedHost } from './egress-policy';

/**
 * The edge policy for traffic into a sandbox: what the gateway's traffic listener and the host agent's proxy decide
 * about a request before anything of it is forwarded. Both call `ingressDecision`, so they cannot drift.
 */

/** Header that carries a sandbox's traffic access token on requests to its user ports (E2B's name). */
export const TRAFFIC_ACCESS_TOKEN_HEADER = 'e2b-traffic-access-token';

/** E2B envd's message for a request without a valid token; the SDK turns the 401 into an AuthenticationError. */
const UNAUTHORIZED = 'unauthorized access, please provide a valid access token or method signing if supported';

export interface IngressRequest {
  method?: string;
  /** The request target as received (path and query). */
  url?: string;
  headers: Record<string, string | string[] | undefined>;
}

/** What the edge knows about a sandbox's ingress (from the scheduler's SandboxRoute, or the host's record). */
export interface SandboxIngress {
  /** Undefined only in a host record written before every sandbox had one: then nothing but /health passes. */
  envdAccessToken: string | undefined;
  /** Set when the sandbox's user ports are not public. */
  trafficAccessToken?: string;
  /** Host header for user-port requests instead of the caller's; `${PORT}` is the port. */
  maskRequestHost?: string;
}

export type IngressDecision =
  /** `host`: the Host header to forward instead of the caller's. */
  | { allowed: true; host?: string }
  | { allowed: false; status: 401 | 403; message: string };

const ALLOWED: IngressDecision = Object.freeze({ allowed: true });

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** The request for `port` of a sandbox: the envd rule on the guest agent's port, the user-port rule elsewhere. */
export function ingressDecision(req: IngressRequest, port: number, ingress: SandboxIngress, nowSeconds = Math.floor(Date.now() / 1000)): IngressDecision {
  return port === ENVD_PORT ? envdAccessDecision(req, ingress.envdAccessToken, nowSeconds) : userPortDecision(req, ingress, port);
}

/**
 * The envd port. `GET|HEAD /health` is open; `/init` is refused whatever the credentials (only the host agent
 * sends it, straight over the sandbox's network slot, never through a proxy); `GET|POST /files` takes the token
 * header or a URL signed with it; everything else (Connect RPC, /envs, /metrics, …) needs the token header.
 * A token header that is present is always checked, as envd does, even where a signature would do.
 */
export function envdAccessDecision(req: IngressRequest, accessToken: string | undefined, nowSeconds: number): IngressDecision {
  const method = (req.method ?? 'GET').toUpperCase();
  let url: URL;
  try {
    // Parsed exactly as the guest agent parses it, so both see the same path (dot segments resolved, and so on).
    url = new URL(req.url ?? '/', 'http://guest-agent');
  } catch {
    return { allowed: false, status: 401, message: UNAUTHORIZED };
  }
  if (url.pathname === '/health' && (method === 'GET' || method === 'HEAD')) return ALLOWED;
  if (url.pathname === '/init') return { allowed: false, status: 403, message: '/init is sent by the host agent only; it is not reachable from outside' };
  if (accessToken === undefined) return { allowed: false, status: 401, message: 'sandbox has no access token: only /health is reachable' };

  const given = single(req.headers[ACCESS_TOKEN_HEADER]);
  if (given !== undefined) return tokensEqual(accessToken, given) ? ALLOWED : { allowed: false, status: 401, message: 'invalid access token' };
  if (url.pathname === '/files' && (method === 'GET' || method === 'POST')) {
    const rejected = rejectSignedFilesUrl(accessToken, method, url.searchParams, nowSeconds);
    return rejected === undefined ? ALLOWED : { allowed: false, status: 401, message: rejected };
  }
  return { allowed: false, status: 401, message: UNAUTHORIZED };
}

/**
 * A user port (anything but envd's). With a traffic access token set, the request must carry it (E2B: 403 when
 * missing or wrong); with a Host mask set, the forwarded Host is the mask with `${PORT}` filled in.
 */
export function userPortDecision(req: IngressRequest, ingress: Omit<SandboxIngress, 'envdAccessToken'>, port: number): IngressDecision {
  if (ingress.trafficAccessToken !== undefined) {
    const given = single(req.headers[TRAFFIC_ACCESS_TOKEN_HEADER]);
    if (given === undefined || given === '') {
      return { allowed: false, status: 403, message: `Sandbox is secured with traffic access token. Token header '${TRAFFIC_ACCESS_TOKEN_HEADER}' is missing` };
    }
    if (!tokensEqual(ingress.trafficAccessToken, given)) {
      return { allowed: false, status: 403, message: `Sandbox is secured with traffic access token. Provided token in header '${TRAFFIC_ACCESS_TOKEN_HEADER}' is invalid` };
    }
  }
  return ingress.maskRequestHost ? { allowed: true, host: maskedHost(ingress.maskRequestHost, port) } : ALLOWED;
}

/**
 * Rewrites an allowed request's headers for forwarding: the Host mask, and no traffic access token. E2B's proxy
 * forwards that header to the sandbox; Kiln strips it, because it is the edge's credential, not the app's, and
 * code in the sandbox (or anything it logs to) has no business seeing the token that guards its own ports.
 */
export function applyIngressHeaders(headers: Record<string, string | string[] | undefined>, decision: IngressDecision & { allowed: true }): void {
  delete headers[TRAFFIC_ACCESS_TOKEN_HEADER];
  if (decision.host !== undefined) headers.host = decision.host;
}

/** The base http-proxy resolves a request-target against; only a target that keeps it is a plain path. */
const PROXY_BASE = 'http://base.invalid';

/**
 * Whether a request-target can be forwarded as the path it is. Both traffic proxies hand the target to http-proxy,
 * which reads it as a WHATWG URL against a dummy base: `/\x` parses as a network-path reference (the backslash counts
 * as a slash) naming host `x`, so it either throws (`/\`, `/\[`: a 500 from the gateway, an uncaught exception in the
 * host agent's synchronous handler) or forwards a different path than the caller sent. Such targets are refused 400.
 */
export function forwardableRequestTarget(target: string | undefined): boolean {
  if (!target?.startsWith('/')) return false;
  try {
    // As http-proxy does: a leading '//' is kept as part of the path under the base.
    return new URL(target.startsWith('//') ? `${PROXY_BASE}${target}` : target, PROXY_BASE).host === 'base.invalid';
  } catch {
    return false;
  }
}
