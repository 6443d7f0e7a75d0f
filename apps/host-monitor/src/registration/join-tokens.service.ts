import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { Injectable } from '@nestjs/common';
import { HostMonitorEnv } from '@kiln/config';
import { HostRepository } from '@kiln/db';
import { JoinTokenReply, mintJoinToken, verifyJoinToken } from '@kiln/messaging';
import { isHostId } from './host-id';
import { InvalidJoinTokenRequestError, RegistrationRejectedError } from './registration.errors';

/** A join token's lifetime when the request names none. */
export const DEFAULT_JOIN_TOKEN_TTL_SECONDS = 3600;

export function credentialHashOf(credential: string): string {
  return createHash('sha256').update(credential, 'utf8').digest('hex');
}

/**
 * Join tokens and host credentials. A one-time join token (HMAC with HOST_JOIN_TOKEN_KEY, for one host id) is
 * exchanged once for a host credential: 32 random bytes, of which only the sha256 is stored.
 */
@Injectable()
export class JoinTokens {
  constructor(
    private readonly env: HostMonitorEnv,
    private readonly hosts: HostRepository,
  ) {}

  /** A token for `hostId`, living `ttlSeconds` (default one hour) capped at HOST_JOIN_TOKEN_MAX_TTL_SECONDS. */
  mint(hostId: unknown, ttlSeconds?: unknown): JoinTokenReply {
    if (!isHostId(hostId)) throw new InvalidJoinTokenRequestError('hostId must be 1-63 characters of [a-zA-Z0-9._-]');
    if (ttlSeconds !== undefined && (typeof ttlSeconds !== 'number' || !Number.isInteger(ttlSeconds) || ttlSeconds < 1)) {
      throw new InvalidJoinTokenRequestError('ttlSeconds must be a positive whole number');
    }
    const lifetime = Math.min((ttlSeconds as number | undefined) ?? DEFAULT_JOIN_TOKEN_TTL_SECONDS, this.env.HOST_JOIN_TOKEN_MAX_TTL_SECONDS);
    const minted = mintJoinToken(this.env.HOST_JOIN_TOKEN_KEY, hostId, lifetime);
    return { hostId, token: minted.token, expiresAt: minted.expiresAt.toISOString() };
  }

  /**
   * Spends a join token for `hostId` (the registration subject's): valid MAC, not expired, for this host, never used.
   * Returns a new credential (plain, for the reply) and its hash (for the DB).
   */
  async redeem(token: string, hostId: string): Promise<{ credential: string; credentialHash: string }> {
    const verified = verifyJoinToken(this.env.HOST_JOIN_TOKEN_KEY, token);
    if (!verified) throw new RegistrationRejectedError('join token rejected: malformed, not signed by this fleet, or expired');
    if (verified.hostId !== hostId) throw new RegistrationRejectedError(`join token is for another host than ${hostId}`);
    if (!(await this.hosts.useJoinToken(verified.nonce, hostId, verified.expiresAt))) {
      throw new RegistrationRejectedError('join token already used');
    }
    const credential = randomBytes(32).toString('base64url');
    return { credential, credentialHash: credentialHashOf(credential) };
  }

  /** Whether `credential` is the one issued to `hostId` (and not revoked by a removal). */
  async isCredentialOf(credential: string, hostId: string): Promise<boolean> {
    const stored = await this.hosts.credentialHashOf(hostId);
    if (!stored) return false;
    const presented = Buffer.from(credentialHashOf(credential), 'hex');
    const expected = Buffer.from(stored, 'hex');
    return presented.length === expected.length && timingSafeEqual(presented, expected);
  }
}
