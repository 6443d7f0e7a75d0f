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
  if (unsupported.length > 0) {
    throw KilnError.invalid(`not supported by this deployment: ${unsupported.join(', ')}`);
  }
}

/** What a create asks for at its timeout and while paused, from E2B's fields or the SDK option's `lifecycle` shape. */
export interface CreateLifecycle {
  autoPause: boolean;
  autoPauseMemory: boolean;
  autoResume: boolean;
}

/**
 * The create's lifecycle: E2B's `autoPause`, `autoPauseMemory`, `autoResume.enabled` (what the SDKs send for
 * `lifecycle: { onTimeout, autoResume }`), or that `lifecycle` object itself (hand-written clients); both at once must
 * agree. Refused as E2B refuses them: autoResume with a disk-only pause (traffic never resumes one), keepMemory or
 * autoResume with onTimeout 'kill', an unknown onTimeout.
 */
export function lifecycleOf(body: {
  autoPause?: boolean;
  autoPauseMemory?: boolean;
  autoResume?: { enabled?: boolean };
  lifecycle?: Record<string, unknown>;
}): CreateLifecycle {
  let autoPause = body.autoPause;
  let autoPauseMemory = body.autoPauseMemory;
  let autoResume = body.autoResume?.enabled;
  const lifecycle = body.lifecycle;
  if (lifecycle !== undefined) {
    const { onTimeout, autoResume: lifecycleAutoResume } = lifecycle as { onTimeout?: unknown; autoResume?: unknown };
    // null, as untyped SDK callers may leave it, selects nothing (the SDK itself omits it).
    if (onTimeout !== undefined && onTimeout !== null) {
      const action = typeof onTimeout === 'object' && onTimeout !== null ? (onTimeout as { action?: unknown }).action : onTimeout;
      if (action !== 'kill' && action !== 'pause') throw KilnError.invalid("lifecycle.onTimeout must be 'kill' or 'pause' (or { action, keepMemory })");
      const keepMemory = typeof onTimeout === 'object' && onTimeout !== null ? (onTimeout as { keepMemory?: unknown }).keepMemory : undefined;
      if (keepMemory !== undefined && typeof keepMemory !== 'boolean') throw KilnError.invalid('lifecycle.onTimeout.keepMemory must be a boolean');
      if (keepMemory !== undefined && action !== 'pause') throw KilnError.invalid("lifecycle.onTimeout.keepMemory is only allowed when action is 'pause'");
      if (autoPause !== undefined && autoPause !== (action === 'pause')) throw KilnError.invalid('autoPause and lifecycle.onTimeout disagree');
      autoPause = action === 'pause';
      if (keepMemory !== undefined) autoPauseMemory = keepMemory;
    }
    if (lifecycleAutoResume !== undefined && lifecycleAutoResume !== null) {
      if (typeof lifecycleAutoResume !== 'boolean') throw KilnError.invalid('lifecycle.autoResume must be a boolean');
      if (autoResume !== undefined && autoResume !== lifecycleAutoResume) throw KilnError.invalid('autoResume.enabled and lifecycle.autoResume disagree');
      autoResume = lifecycleAutoResume;
    }
  }
  if (autoResume && autoPauseMemory === false) {
    throw KilnError.invalid('autoResume cannot be enabled with autoPauseMemory: false (a filesystem-only pause must be resumed explicitly)');
  }
  return { autoPause: autoPause ?? false, autoPauseMemory: autoPauseMemory ?? true, autoResume: autoResume ?? false };
}

/**
 * `POST /sandboxes/{id}/resume` and `/connect` with `memory: false` (E2B: resume from disk only, ignoring the saved
 * memory): not implemented, so refused rather than silently restoring the memory (E2B says the same).
 */
export function rejectUnsupportedConnectOptions(body: unknown): void {
  if (typeof body !== 'object' || body === null) return;
  if ((body as Record<string, unknown>).memory === false) {
    throw KilnError.invalid('not supported by this deployment: memory: false (resuming from disk only)');
  }
}
