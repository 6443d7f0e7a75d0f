import { UPLOAD_TOKEN_TTL_MS, UploadTokens } from './upload-token';

describe('UploadTokens', () => {
  const tokens = new UploadTokens('k'.repeat(40));
  const grant = { teamId: '6f1c1d7e-0000-4000-8000-000000000001', templateId: 'abcdefghij0123456789', hash: 'f'.repeat(64) };

  it('verifies a token for the template and hash it was signed for, until it expires', () => {
    const now = 1_800_000_000_000;
    const token = tokens.sign(grant, now);
    expect(tokens.verify(token, grant.templateId, grant.hash, now + 1000)).toEqual({ ...grant, expiresAt: now + UPLOAD_TOKEN_TTL_MS });
    expect(tokens.verify(token, grant.templateId, grant.hash, now + UPLOAD_TOKEN_TTL_MS)).toBeUndefined();
  });

  it('refuses a token for another template, another hash, another team or a changed expiry', () => {
    const now = Date.now();
    const token = tokens.sign(grant, now);
    expect(tokens.verify(token, 'other0000000000000000', grant.hash, now)).toBeUndefined();
    expect(tokens.verify(token, grant.templateId, 'e'.repeat(64), now)).toBeUndefined();
    const [expiry, , mac] = token.split('.');
    expect(tokens.verify(`${expiry}.6f1c1d7e-0000-4000-8000-000000000002.${mac}`, grant.templateId, grant.hash, now)).toBeUndefined();
    expect(tokens.verify(`${Number(expiry) + 1}.${grant.teamId}.${mac}`, grant.templateId, grant.hash, now)).toBeUndefined();
  });

  it('refuses tokens signed with another key, malformed tokens and non-strings', () => {
    const token = new UploadTokens('j'.repeat(40)).sign(grant);
    expect(tokens.verify(token, grant.templateId, grant.hash)).toBeUndefined();
    for (const bad of ['', 'a.b.c', '1.2', `${Date.now() + 1000}..x`, 'x'.repeat(600), undefined, 42, ['a']]) {
      expect(tokens.verify(bad, grant.templateId, grant.hash)).toBeUndefined();
    }
  });

  it('without a secret, uses a random key of its own', () => {
    const token = new UploadTokens(undefined).sign(grant);
    expect(new UploadTokens(undefined).verify(token, grant.templateId, grant.hash)).toBeUndefined();
  });
});
