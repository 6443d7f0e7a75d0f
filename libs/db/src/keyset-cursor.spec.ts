import { decodeKeysetCursor, encodeKeysetCursor } from './keyset-cursor';

describe('keyset cursor tokens', () => {
  const at = new Date('2026-01-02T03:04:05.678Z');

  it('round-trips time, id and order', () => {
    expect(decodeKeysetCursor(encodeKeysetCursor(at, 'abc123', 'desc'))).toEqual({ at, id: 'abc123', order: 'desc' });
    expect(decodeKeysetCursor(encodeKeysetCursor(at, '0b0e8d2c-1f1a-4c52-9f5e-0d8a7b6c5d4e', 'asc'))).toEqual({
      at,
      id: '0b0e8d2c-1f1a-4c52-9f5e-0d8a7b6c5d4e',
      order: 'asc',
    });
  });

  it("uses E2B's form: base64url of time__id, with __asc for ascending pages", () => {
    expect(Buffer.from(encodeKeysetCursor(at, 'abc', 'desc'), 'base64url').toString()).toBe('2026-01-02T03:04:05.678Z__abc');
    expect(Buffer.from(encodeKeysetCursor(at, 'abc', 'asc'), 'base64url').toString()).toBe('2026-01-02T03:04:05.678Z__abc__asc');
    // E2B pads (Go's URLEncoding); a padded token reads the same.
    expect(decodeKeysetCursor(Buffer.from('2026-01-02T03:04:05.678Z__ab').toString('base64'))).toMatchObject({ id: 'ab' });
  });

  it('refuses anything it did not issue', () => {
    const encode = (text: string) => Buffer.from(text).toString('base64url');
    for (const token of [
      '',
      'not-a-real-token',
      'a b',
      encode('2026-01-02T03:04:05.000Z'),
      encode('2026-01-02T03:04:05.000Z__abc__desc'),
      encode('2026-01-02T03:04:05.000Z__abc__asc__x'),
      encode('yesterday__abc'),
      encode('2026-13-45T03:04:05.000Z__abc'),
      encode('2026-02-30T03:04:05.000Z__abc'),
      encode('2026-01-02T03:04:05+01:00__abc'),
      encode('2026-01-02T03:04:05.000Z__'),
      encode('2026-01-02T03:04:05.000Z__a/b'),
      encode(JSON.stringify({ c: '2026-01-02T03:04:05Z', i: 'abc' })),
      'x'.repeat(600),
    ]) {
      expect({ token, cursor: decodeKeysetCursor(token) }).toEqual({ token, cursor: null });
    }
  });
});
