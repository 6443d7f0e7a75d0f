import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * One-time join tokens: what lets a new host agent register for the first time. The host monitor (and the stack
 * scripts, offline, with the same key) mints one for a host id; the agent presents it once and gets a host credential
 * back. The token is self-contained (HMAC-signed, expiring); "one time" is the monitor's job: it records each nonce
 * it accepted (table host_join_tokens) and refuses a second use.
 *
 * Format: `kjt1.<base64url(JSON {h: hostId, e: expiresEpochSeconds, n: nonceHex32})>.<base64url(HMAC-SHA256(key, 'kjt1.' + payload))>`.
 * Pure functions with no Nest or NATS dependency, so tools/stack/join-token.cjs can load the compiled file alone.
 */

export const JOIN_TOKEN_PREFIX = 'kjt1';

export interface MintedJoinToken {
  token: string;
  expiresAt: Date;
  /** 32 hex characters: the token's identity, recorded when it is used. */
  nonce: string;
}

export interface VerifiedJoinToken {
  hostId: string;
  expiresAt: Date;
  nonce: string;
}

interface JoinTokenPayload {
  h: string;
  e: number;
  n: string;
}

const NONCE_PATTERN = /^[0-9a-f]{32}$/;

/** Mints a token for `hostId` valid `ttlSeconds` from `now` (ms since the epoch), expiry rounded up to a whole second. */
export function mintJoinToken(key: string, hostId: string, ttlSeconds: number, now: number = Date.now()): MintedJoinToken {
  if (key.length === 0) throw new Error('a join token key is required');
  if (hostId.length === 0) throw new Error('a join token needs a host id');
  if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0) throw new Error('a join token needs a positive lifetime');
  const nonce = randomBytes(16).toString('hex');
  const expiresEpochSeconds = Math.ceil((now + ttlSeconds * 1000) / 1000);
  const payload: JoinTokenPayload = { h: hostId, e: expiresEpochSeconds, n: nonce };
  const encodedPayload = Buffer.from(JSON.stringify(payload), 'utf8').toString('base64url');
  const token = `${JOIN_TOKEN_PREFIX}.${encodedPayload}.${macOf(key, encodedPayload)}`;
  return { token, expiresAt: new Date(expiresEpochSeconds * 1000), nonce };
}

/**
 * The token's claims if its MAC is the key's and it has not expired at `now`; undefined for anything else (malformed,
 * forged, expired). Whether the host id matches the registering host, and whether the nonce was used, is the caller's.
 */
export function verifyJoinToken(key: string, token: string, now: number = Date.now()): VerifiedJoinToken | undefined {
  if (key.length === 0 || typeof token !== 'string') return undefined;
  const parts = token.split('.');
  if (parts.length !== 3 || parts[0] !== JOIN_TOKEN_PREFIX) return undefined;
  const [, encodedPayload, presentedMac] = parts;
  const expectedMac = Buffer.from(macOf(key, encodedPayload), 'utf8');
  const presented = Buffer.from(presentedMac, 'utf8');
  if (presented.length !== expectedMac.length || !timingSafeEqual(presented, expectedMac)) return undefined;
  const payload = parsePayload(encodedPayload);
  if (!payload) return undefined;
  const expiresAtMs = payload.e * 1000;
  if (now >= expiresAtMs) return undefined;
  return { hostId: payload.h, expiresAt: new Date(expiresAtMs), nonce: payload.n };
}

function macOf(key: string, encodedPayload: string): string {
  return createHmac('sha256', key).update(`${JOIN_TOKEN_PREFIX}.${encodedPayload}`).digest('base64url');
}

function parsePayload(encodedPayload: string): JoinTokenPayload | undefined {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(encodedPayload, 'base64url').toString('utf8'));
    if (typeof parsed !== 'object' || parsed === null) return undefined;
    const { h, e, n } = parsed as Record<string, unknown>;
    if (typeof h !== 'string' || h.length === 0) return undefined;
    if (typeof e !== 'number' || !Number.isSafeInteger(e)) return undefined;
    if (typeof n !== 'string' || !NONCE_PATTERN.test(n)) return undefined;
    return { h, e, n };
  } catch {
    return undefined;
  }
}
