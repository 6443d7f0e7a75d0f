import { createHmac } from 'node:crypto';
import { mintJoinToken, verifyJoinToken } from './join-token';

const KEY = 'k'.repeat(40);
const NOW = Date.UTC(2027, 0, 1, 12, 0, 0);

describe('join tokens', () => {
  it('verifies a minted token with its host id, nonce and expiry', () => {
    const minted = mintJoinToken(KEY, 'node-1.cluster.local', 600, NOW);
    expect(minted.token).toMatch(/^kjt1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    expect(minted.nonce).toMatch(/^[0-9a-f]{32}$/);
    expect(minted.expiresAt.getTime()).toBe(NOW + 600_000);
    expect(verifyJoinToken(KEY, minted.token, NOW + 1000)).toEqual({
      hostId: 'node-1.cluster.local',
      expiresAt: minted.expiresAt,
      nonce: minted.nonce,
    });
  });

  it('gives every token its own nonce', () => {
    expect(mintJoinToken(KEY, 'h', 60, NOW).nonce).not.toBe(mintJoinToken(KEY, 'h', 60, NOW).nonce);
  });

  it('rounds the expiry up to a whole second, never shortening the lifetime', () => {
    const minted = mintJoinToken(KEY, 'h', 10, NOW + 1);
    expect(minted.expiresAt.getTime()).toBe(NOW + 11_000);
  });

  it('refuses a token at and after its expiry', () => {
    const minted = mintJoinToken(KEY, 'h', 60, NOW);
    expect(verifyJoinToken(KEY, minted.token, NOW + 59_999)).toBeDefined();
    expect(verifyJoinToken(KEY, minted.token, NOW + 60_000)).toBeUndefined();
  });

  it('refuses a token signed with another key', () => {
    const minted = mintJoinToken('x'.repeat(40), 'h', 60, NOW);
    expect(verifyJoinToken(KEY, minted.token, NOW)).toBeUndefined();
  });

  it('refuses a token whose payload was changed (another host id)', () => {
    const minted = mintJoinToken(KEY, 'host-a', 60, NOW);
    const [prefix, payload, mac] = minted.token.split('.');
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    const forged = Buffer.from(JSON.stringify({ ...claims, h: 'host-b' })).toString('base64url');
    expect(verifyJoinToken(KEY, `${prefix}.${forged}.${mac}`, NOW)).toBeUndefined();
  });

  it('refuses malformed tokens', () => {
    for (const token of ['', 'kjt1', 'kjt1..', 'kjt2.a.b', 'kjt1.a.b.c', 'not a token']) {
      expect(verifyJoinToken(KEY, token, NOW)).toBeUndefined();
    }
  });

  it('refuses a correctly signed payload with missing or ill-typed claims', () => {
    const sign = (claims: unknown) => {
      const payload = Buffer.from(JSON.stringify(claims)).toString('base64url');
      const mac = createHmac('sha256', KEY).update(`kjt1.${payload}`).digest('base64url');
      return `kjt1.${payload}.${mac}`;
    };
    const expires = NOW / 1000 + 60;
    expect(verifyJoinToken(KEY, sign({ h: 'h', e: expires, n: 'a'.repeat(32) }), NOW)).toBeDefined();
    expect(verifyJoinToken(KEY, sign({ h: '', e: expires, n: 'a'.repeat(32) }), NOW)).toBeUndefined();
    expect(verifyJoinToken(KEY, sign({ h: 'h', e: String(expires), n: 'a'.repeat(32) }), NOW)).toBeUndefined();
    expect(verifyJoinToken(KEY, sign({ h: 'h', e: expires, n: 'short' }), NOW)).toBeUndefined();
    expect(verifyJoinToken(KEY, sign(['h', expires]), NOW)).toBeUndefined();
  });

  it('refuses to mint without a key, host id or lifetime', () => {
    expect(() => mintJoinToken('', 'h', 60, NOW)).toThrow();
    expect(() => mintJoinToken(KEY, '', 60, NOW)).toThrow();
    expect(() => mintJoinToken(KEY, 'h', 0, NOW)).toThrow();
  });
});
