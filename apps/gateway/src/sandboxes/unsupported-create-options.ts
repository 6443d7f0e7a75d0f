import { KilnError } from '@kiln/contracts';

function isNonEmptyObject(value: unknown): boolean {
  return typeof value === 'object' && value !== null && Object.values(value).some((v) => v !== undefined && v !== null);
}

/** Network fields Kiln enforces, at create and on `PUT /sandboxes/{id}/network`. */
const NETWORK_FIELDS = new Set(['allowOut', 'denyOut', 'allowPublicTraffic', 'maskRequestHost']);
const NETWORK_UPDATE_FIELDS = new Set(['allowOut', 'denyOut', 'allow_internet_access']);

/**
 * Parts of E2B's network config Kiln does not implement (a SOCKS5 `egressProxy`, per-domain `rules`, `httpsPorts`)
 * or does not know: each is named, so that nothing that would change what the sandbox may reach is dropped silently.
 */
export function unsupportedNetworkOptions(network: unknown, prefix = '', known = NETWORK_FIELDS): string[] {
  if (typeof network !== 'object' || network === null || Array.isArray(network)) return [];
  return Object.entries(network as Record<string, unknown>)
    .filter(([key, value]) => !known.has(key) && value !== undefined && value !== null && !isEmptyCollection(value))
    .map(([key]) => `${prefix}${key}`);
}

function isEmptyCollection(value: unknown): boolean {
  if (Array.isArray(value)) return value.length === 0;
  return typeof value === 'object' && value !== null && !isNonEmptyObject(value);
}

/** `PUT /sandboxes/{id}/network` with an option Kiln does not implement is refused, naming it. */
export function rejectUnsupportedNetworkUpdate(body: unknown): void {
  const unsupported = unsupportedNetworkOptions(body, '', NETWORK_UPDATE_FIELDS);
  if (unsupported.length > 0) throw KilnError.invalid(`not supported by this deployment: ${unsupported.join(', ')}`);
}

/**
 * E2B create options Kiln does not implement. Options that would restrict or
 * extend what the sandbox may do (egress rules, volumes, workload identity) are
 * refused rather than ignored: silently dropping a deny rule would hand the
 * sandbox more network access than the caller asked for.
 */
export function rejectUnsupportedCreateOptions(body: unknown): void {
  if (typeof body !== 'object' || body === null) return;
  const raw = body as Record<string, unknown>;
  const unsupported: string[] = [];
  unsupported.push(...unsupportedNetworkOptions(raw.network, 'network.'));
  if (Array.isArray(raw.volumeMounts) && raw.volumeMounts.length > 0) unsupported.push('volumeMounts');
  if (raw.mcp !== undefined && raw.mcp !== null) unsupported.push('mcp');
  if (isNonEmptyObject((raw.iam as { tokens?: unknown } | undefined)?.tokens)) unsupported.push('iam');
  if ((raw.autoResume as { enabled?: unknown } | undefined)?.enabled === true) unsupported.push('autoResume');
  unsupported.push(...unsupportedPauseOnTimeout(raw));
  if (unsupported.length > 0) {
    throw KilnError.invalid(`not supported by this deployment: ${unsupported.join(', ')}`);
  }
}

/**
 * Pausing on timeout, in any of the shapes a client may ask for it: `autoPause: true` (what the SDKs send for
 * `lifecycle: { onTimeout: 'pause' }`), or a `lifecycle` object itself (the SDK option's shape, sent by hand-written
 * clients). Until pause exists such a sandbox would be killed at its timeout, so it is refused instead. What the SDKs
 * send by default (no autoPause, or `autoPause: false`; `onTimeout: 'kill'`) stays accepted.
 */
function unsupportedPauseOnTimeout(raw: Record<string, unknown>): string[] {
  const unsupported: string[] = [];
  if (raw.autoPause === true) unsupported.push('autoPause');
  const lifecycle = raw.lifecycle;
  if (typeof lifecycle === 'object' && lifecycle !== null) {
    const { onTimeout, autoResume } = lifecycle as { onTimeout?: unknown; autoResume?: unknown };
    const action = typeof onTimeout === 'object' && onTimeout !== null ? (onTimeout as { action?: unknown }).action : onTimeout;
    if (action === 'pause') unsupported.push('lifecycle.onTimeout');
    if (autoResume === true) unsupported.push('lifecycle.autoResume');
  }
  return unsupported;
}

/** `POST /sandboxes/{id}/connect` with the deprecated `autoPause: true`: refused for the same reason as at create. */
export function rejectUnsupportedConnectOptions(body: unknown): void {
  if (typeof body !== 'object' || body === null) return;
  if ((body as Record<string, unknown>).autoPause === true) throw KilnError.invalid('not supported by this deployment: autoPause');
}
