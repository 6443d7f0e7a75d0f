/** Direction of a keyset-paged list (E2B's OrderDirection). */
export type SortOrder = 'asc' | 'desc';

/** Where the previous page ended: the last row's sort time and id, and the order the page was read in. */
export interface KeysetCursor {
  at: Date;
  id: string;
  order: SortOrder;
}

const SEPARATOR = '__';
const ASC_MARK = 'asc';
const TOKEN_PATTERN = /^[A-Za-z0-9_-]{1,512}={0,2}$/;
const ID_PATTERN = /^[A-Za-z0-9-]{1,128}$/;

/**
 * A page token in E2B's form: base64url of `<RFC 3339 time>__<id>`, with `__asc` appended for ascending pages. The
 * order is part of the token because the keyset comparison differs per direction: a token replayed under the other
 * order would serve rows the caller already saw, so it is refused instead.
 */
export function encodeKeysetCursor(at: Date, id: string, order: SortOrder): string {
  const parts = [at.toISOString(), id, ...(order === 'asc' ? [ASC_MARK] : [])];
  return Buffer.from(parts.join(SEPARATOR), 'utf8').toString('base64url');
}

/** The cursor in a token this API issued, or null for anything else. */
export function decodeKeysetCursor(token: string): KeysetCursor | null {
  if (!TOKEN_PATTERN.test(token)) return null;
  const parts = Buffer.from(token, 'base64url').toString('utf8').split(SEPARATOR);
  if (parts.length < 2 || parts.length > 3) return null;
  const [time, id, mark] = parts;
  if (mark !== undefined && mark !== ASC_MARK) return null;
  if (!ID_PATTERN.test(id)) return null;
  // Issued tokens carry toISOString()'s exact form; anything else (a rolled-over date, other precision) was not issued.
  const at = new Date(time);
  if (Number.isNaN(at.getTime()) || at.toISOString() !== time) return null;
  return { at, id, order: mark === ASC_MARK ? 'asc' : 'desc' };
}
