import 'reflect-metadata';
import { KilnError } from '@kiln/contracts';
import { parseMetadataFilter, parseSandboxListQuery, parseStartedAfter } from './sandbox-list-query';

/** What the e2b SDK puts in the `metadata` query value (before the HTTP layer encodes it once more). */
function sdkEncoded(metadata: Record<string, string>): string {
  return new URLSearchParams(Object.fromEntries(Object.entries(metadata).map(([k, v]) => [encodeURIComponent(k), encodeURIComponent(v)]))).toString();
}

describe('parseMetadataFilter', () => {
  it('decodes what the SDK encodes, including separators inside values', () => {
    const metadata = { user: 'a b', 'odd key': 'x=y&z', unicode: 'ä€' };
    expect(parseMetadataFilter(sdkEncoded(metadata))).toEqual(metadata);
  });

  it('treats an empty filter as none', () => {
    expect(parseMetadataFilter(undefined)).toBeUndefined();
    expect(parseMetadataFilter('')).toBeUndefined();
  });

  it('rejects empty keys and broken encoding', () => {
    expect(() => parseMetadataFilter('=v')).toThrow(KilnError);
    expect(() => parseMetadataFilter('a=%25E0%25A4%25A')).toThrow(/URL-encoded/);
  });
});

describe('parseSandboxListQuery', () => {
  it('accepts comma-separated and repeated states', () => {
    expect(parseSandboxListQuery({ state: 'running,paused' }).states).toEqual(['running', 'paused']);
    expect(parseSandboxListQuery({ state: ['paused', 'running,paused'] }).states).toEqual(['paused', 'running']);
  });

  it('converts limit and keeps the token', () => {
    expect(parseSandboxListQuery({ limit: '5', nextToken: 'abc' })).toMatchObject({ limit: 5, nextToken: 'abc' });
  });

  it('reads order, startedAfter and template the way the SDK sends them', () => {
    const startedAfter = new Date('2026-03-04T05:06:07.089Z');
    expect(parseSandboxListQuery({ order: 'asc', startedAfter: startedAfter.toISOString(), template: 'base' })).toMatchObject({
      order: 'asc',
      startedAfter,
      templateRef: 'base',
    });
    expect(parseSandboxListQuery({ template: 'team/my-template' }).templateRef).toBe('team/my-template');
    expect(parseSandboxListQuery({}).order).toBeUndefined();
  });

  it("caps limit at E2B's 100", () => {
    expect(parseSandboxListQuery({ limit: '100' }).limit).toBe(100);
    expect(() => parseSandboxListQuery({ limit: '101' })).toThrow(/limit/);
  });

  it('names the offending parameter', () => {
    expect(() => parseSandboxListQuery({ state: 'gone' })).toThrow(/state/);
    expect(() => parseSandboxListQuery({ limit: 'x' })).toThrow(/limit/);
    expect(() => parseSandboxListQuery({ order: 'sideways' })).toThrow(/order/);
    expect(() => parseSandboxListQuery({ order: ['asc', 'desc'] })).toThrow(/order/);
    expect(() => parseSandboxListQuery({ startedAfter: 'yesterday' })).toThrow(/startedAfter/);
    expect(() => parseSandboxListQuery({ startedAfter: '2026-02-30T00:00:00Z' })).toThrow(/startedAfter/);
    expect(() => parseSandboxListQuery({ template: 'base:v2' })).toThrow(/template: tags are not supported/);
    expect(() => parseSandboxListQuery({ template: '../x' })).toThrow(/template/);
    expect(() => parseSandboxListQuery({ template: '' })).toThrow(/template/);
  });
});

describe('parseStartedAfter', () => {
  it('reads RFC 3339 with offsets and fractions', () => {
    expect(parseStartedAfter('2026-03-04T05:06:07Z').toISOString()).toBe('2026-03-04T05:06:07.000Z');
    expect(parseStartedAfter('2026-03-04t05:06:07.5z').toISOString()).toBe('2026-03-04T05:06:07.500Z');
    expect(parseStartedAfter('2026-03-04T07:06:07.123+02:00').toISOString()).toBe('2026-03-04T05:06:07.123Z');
    expect(parseStartedAfter('2026-03-03T23:36:07-05:30').toISOString()).toBe('2026-03-04T05:06:07.000Z');
    expect(parseStartedAfter('2024-02-29T00:00:00Z').toISOString()).toBe('2024-02-29T00:00:00.000Z');
  });

  it('rounds a bound finer than a millisecond up, so "at or after" stays exact for millisecond start times', () => {
    expect(parseStartedAfter('2026-03-04T05:06:07.123000Z').toISOString()).toBe('2026-03-04T05:06:07.123Z');
    expect(parseStartedAfter('2026-03-04T05:06:07.123000001Z').toISOString()).toBe('2026-03-04T05:06:07.124Z');
  });

  it('refuses out-of-range fields instead of rolling them over', () => {
    for (const value of [
      '2026-13-01T00:00:00Z',
      '2026-00-10T00:00:00Z',
      '2026-02-29T00:00:00Z',
      '2026-04-31T00:00:00Z',
      '2026-01-01T24:00:00Z',
      '2026-01-01T00:60:00Z',
      '2026-01-01T00:00:60Z',
      '2026-01-01T00:00:00+24:00',
      '2026-01-01T00:00:00 01:00',
      '2026-01-01 00:00:00Z',
      '2026-01-01',
      '1714560000',
    ]) {
      expect(() => parseStartedAfter(value)).toThrow(/startedAfter/);
    }
  });
});
