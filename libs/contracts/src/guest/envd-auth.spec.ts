import { createHash } from 'node:crypto';
import { fileSignature, rejectSignature, rejectSignedFilesUrl, tokensEqual } from './envd-auth';

describe('file URL signatures', () => {
  it('is v1_ + unpadded base64 sha256 of path:operation:user:token[:expiration], as the e2b SDK computes it', () => {
    const digest = createHash('sha256').update('/home/user/a.txt:read:user:tok').digest('base64').replace(/=+$/, '');
    expect(fileSignature('/home/user/a.txt', 'read', 'user', 'tok')).toBe(`v1_${digest}`);
    const withExpiry = createHash('sha256').update('a.txt:write::tok:1700000000').digest('base64').replace(/=+$/, '');
    expect(fileSignature('a.txt', 'write', '', 'tok', 1700000000)).toBe(`v1_${withExpiry}`);
  });

  it('accepts a matching signature and names the reason for a rejected one', () => {
    const base = { path: 'p', operation: 'read' as const, username: undefined, nowSeconds: 1000 };
    expect(rejectSignature('tok', { ...base, signature: fileSignature('p', 'read', '', 'tok'), expiration: undefined })).toBeUndefined();
    expect(rejectSignature('tok', { ...base, signature: undefined, expiration: undefined })).toMatch(/missing/);
    expect(rejectSignature('tok', { ...base, signature: 'v1_x', expiration: undefined })).toMatch(/invalid signature/);
    expect(rejectSignature('tok', { ...base, signature: fileSignature('p', 'read', '', 'tok', 999), expiration: '999' })).toMatch(/expired/);
    expect(rejectSignature('tok', { ...base, signature: 'v1_x', expiration: '12abc' })).toMatch(/signature_expiration/);
  });

  it('reads a /files query: GET signs "read", POST signs "write", a missing username is the empty string', () => {
    const query = (signature: string, extra = '') => new URLSearchParams(`path=/tmp/a&signature=${encodeURIComponent(signature)}${extra}`);
    expect(rejectSignedFilesUrl('tok', 'GET', query(fileSignature('/tmp/a', 'read', '', 'tok')), 0)).toBeUndefined();
    expect(rejectSignedFilesUrl('tok', 'POST', query(fileSignature('/tmp/a', 'write', '', 'tok')), 0)).toBeUndefined();
    expect(rejectSignedFilesUrl('tok', 'POST', query(fileSignature('/tmp/a', 'read', '', 'tok')), 0)).toMatch(/invalid signature/);
    expect(rejectSignedFilesUrl('tok', 'GET', query(fileSignature('/tmp/a', 'read', 'root', 'tok'), '&username=root'), 0)).toBeUndefined();
    expect(rejectSignedFilesUrl('tok', 'GET', query(fileSignature('/tmp/a', 'read', 'root', 'tok', 50), '&username=root&signature_expiration=50'), 49)).toBeUndefined();
    expect(rejectSignedFilesUrl('tok', 'GET', query(fileSignature('/tmp/a', 'read', 'root', 'tok', 50), '&username=root&signature_expiration=50'), 51)).toMatch(/expired/);
  });

  it('compares tokens of any length without throwing', () => {
    expect(tokensEqual('abc', 'abc')).toBe(true);
    expect(tokensEqual('abc', 'abcd')).toBe(false);
    expect(tokensEqual('abc', undefined)).toBe(false);
  });
});
