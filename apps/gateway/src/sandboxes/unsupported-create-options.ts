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
  if (unsupported.length > 0) {
    throw KilnError.invalid(`not supported by this deployment: ${unsupported.join(', ')}`);
  }
}
