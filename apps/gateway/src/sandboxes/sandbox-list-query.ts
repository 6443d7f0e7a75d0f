import { ErrorCode, KilnError, ListSandboxesQueryDto, validatePayload } from '@kiln/contracts';

const MAX_METADATA_FILTERS = 64;

/**
 * E2B sends `state` comma-separated (`state=running,paused`); other clients repeat
 * the key. Both become one flat list before validation.
 */
function flattenStates(value: unknown): unknown {
  if (value === undefined) return undefined;
  const parts = (Array.isArray(value) ? value : [value]).flatMap((v) => (typeof v === 'string' ? v.split(',') : [v]));
  return parts.map((p) => (typeof p === 'string' ? p.trim() : p)).filter((p) => p !== '');
}

/**
 * The SDK URL-encodes each key and value, joins them as a query string and sends
 * that as the `metadata` parameter (so values arrive encoded once more after the
 * HTTP layer decoded the outer query). E2B decodes both levels the same way.
 */
export function parseMetadataFilter(raw: string | undefined): Record<string, string> | undefined {
  if (raw === undefined || raw === '') return undefined;
  const filter: Record<string, string> = {};
  const pairs = new URLSearchParams(raw);
  let count = 0;
  for (const [encodedKey, encodedValue] of pairs) {
    if (++count > MAX_METADATA_FILTERS) throw KilnError.invalid(`metadata: at most ${MAX_METADATA_FILTERS} filters`);
    let key: string;
    let value: string;
    try {
      key = decodeURIComponent(encodedKey);
      value = decodeURIComponent(encodedValue);
    } catch {
      throw KilnError.invalid('metadata: keys and values must be URL-encoded');
    }
    if (!key) throw KilnError.invalid('metadata: filter keys must not be empty (expected key=value&key2=value2)');
    filter[key] = value;
  }
  return count > 0 ? filter : undefined;
}

export interface SandboxListFilter {
  states?: Array<'running' | 'paused'>;
  metadata?: Record<string, string>;
  limit?: number;
  nextToken?: string;
}

/** Filters Kiln does not implement yet are refused rather than silently ignored. */
const UNSUPPORTED_FILTERS = ['template', 'startedAfter'];

export function parseSandboxListQuery(query: unknown): SandboxListFilter {
  if (typeof query !== 'object' || query === null) return {};
  const raw = { ...(query as Record<string, unknown>) };
  for (const name of UNSUPPORTED_FILTERS) {
    if (raw[name] !== undefined && raw[name] !== '') {
      throw new KilnError(ErrorCode.InvalidArgument, `${name}: filtering by ${name} is not supported by this deployment`);
    }
  }
  if (raw.order !== undefined && raw.order !== 'asc' && raw.order !== 'desc') {
    throw KilnError.invalid('order must be asc or desc');
  }
  raw.state = flattenStates(raw.state);
  const dto = validatePayload(ListSandboxesQueryDto, raw);
  return {
    states: dto.state?.length ? [...new Set(dto.state)] : undefined,
    metadata: parseMetadataFilter(dto.metadata),
    limit: dto.limit,
    nextToken: dto.nextToken,
  };
}
