import 'reflect-metadata';
import { KilnError } from '@kiln/contracts';
import { parseMetadataFilter, parseSandboxListQuery } from './sandbox-list-query';

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

  it('names the offending parameter', () => {
    expect(() => parseSandboxListQuery({ state: 'gone' })).toThrow(/state/);
    expect(() => parseSandboxListQuery({ limit: 'x' })).toThrow(/limit/);
    expect(() => parseSandboxListQuery({ template: 'base' })).toThrow(/template/);
  });
});
