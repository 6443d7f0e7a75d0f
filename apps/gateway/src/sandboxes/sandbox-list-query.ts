import { KilnError, ListSandboxesQueryDto, validatePayload } from '@kiln/contracts';

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
  /** A template id or alias, without a tag. */
  templateRef?: string;
  startedAfter?: Date;
  order?: 'asc' | 'desc';
  limit?: number;
  nextToken?: string;
}

const RFC3339_PARTS = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d{2}):(\d{2}))$/;

function daysInMonth(year: number, month: number): number {
  if (month === 2) return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0 ? 29 : 28;
  return [4, 6, 9, 11].includes(month) ? 30 : 31;
}

/**
 * E2B's `startedAfter` (an RFC 3339 date-time) as the earliest start time to list. Start times are stored to the
 * millisecond, so a finer bound is rounded up: "started at or after" stays exact (a sandbox's own `startedAt`, fed
 * back, still includes it). Out-of-range fields (month 13, February 30, hour 24) are refused, not rolled over.
 */
export function parseStartedAfter(value: string): Date {
  const invalid = () => KilnError.invalid(`startedAfter: '${value}' is not an RFC 3339 date-time such as 2024-05-01T12:00:00Z`);
  const match = RFC3339_PARTS.exec(value);
  if (!match) throw invalid();
  const [year, month, day, hour, minute, second] = match.slice(1, 7).map(Number);
  const fraction = (match[7] ?? '').padEnd(9, '0');
  const offsetHours = match[9] === undefined ? 0 : Number(match[9]);
  const offsetMinutes = match[10] === undefined ? 0 : Number(match[10]);
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) throw invalid();
  if (hour > 23 || minute > 59 || second > 59 || offsetHours > 23 || offsetMinutes > 59) throw invalid();
  const utc = new Date(0);
  utc.setUTCFullYear(year, month - 1, day);
  utc.setUTCHours(hour, minute, second, Number(fraction.slice(0, 3)));
  const offsetMs = (match[8] === '-' ? -1 : 1) * (offsetHours * 60 + offsetMinutes) * 60_000;
  const roundUp = Number(fraction.slice(3)) > 0 ? 1 : 0;
  return new Date(utc.getTime() - offsetMs + roundUp);
}

/**
 * E2B's `template` filter: an id or alias. A tag is refused (as E2B does): a sandbox records its template, not a
 * tag, so a tagged filter could only be ignored or match every tag.
 */
function parseTemplateFilter(value: string): string {
  if (value.includes(':')) throw KilnError.invalid('template: tags are not supported here because sandboxes are not tag-scoped');
  return value;
}

export function parseSandboxListQuery(query: unknown): SandboxListFilter {
  if (typeof query !== 'object' || query === null) return {};
  const raw = { ...(query as Record<string, unknown>) };
  raw.state = flattenStates(raw.state);
  const dto = validatePayload(ListSandboxesQueryDto, raw);
  return {
    states: dto.state?.length ? [...new Set(dto.state)] : undefined,
    metadata: parseMetadataFilter(dto.metadata),
    templateRef: dto.template !== undefined ? parseTemplateFilter(dto.template) : undefined,
    startedAfter: dto.startedAfter !== undefined ? parseStartedAfter(dto.startedAfter) : undefined,
    order: dto.order,
    limit: dto.limit,
    nextToken: dto.nextToken,
  };
}
