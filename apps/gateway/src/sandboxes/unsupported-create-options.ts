import { KilnError } from '@kiln/contracts';

function isNonEmptyObject(value: unknown): boolean {
  return typeof value === 'object' && value !== null && Object.values(value).some((v) => v !== undefined && v !== null);
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
  if (isNonEmptyObject(raw.network)) unsupported.push('network (use allow_internet_access)');
  if (Array.isArray(raw.volumeMounts) && raw.volumeMounts.length > 0) unsupported.push('volumeMounts');
  if (raw.mcp !== undefined && raw.mcp !== null) unsupported.push('mcp');
  if (isNonEmptyObject((raw.iam as { tokens?: unknown } | undefined)?.tokens)) unsupported.push('iam');
  if ((raw.autoResume as { enabled?: unknown } | undefined)?.enabled === true) unsupported.push('autoResume');
  if (unsupported.length > 0) {
    throw KilnError.invalid(`not supported by this deployment: ${unsupported.join(', ')}`);
  }
}
