import { Injectable } from '@nestjs/common';
import { GatewayEnv } from '@kiln/config';
import { UnauthenticatedRateLimitedError } from './rate-limit.errors';
import { RedisThrottlerStorage } from './redis-throttler-storage';

const WINDOW_MS = 60_000;

/** Blocked addresses kept beyond this many prompt a sweep of the expired ones (a spray from many addresses). */
const BLOCKED_ADDRESSES_SWEEP_AT = 10_000;

/**
 * The per-client-address budget of requests without a valid API key (RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE). The
 * per-key limit cannot cover them (there is no key to count against), so without this an attacker could spray
 * keys unthrottled. Used by ApiKeyGuard: each missing or invalid key is counted in Redis (shared by every replica),
 * and the one over the budget gets 429. An address this replica saw go over is then refused before any key lookup
 * until its window ends, from memory: a request with a valid key pays no Redis round trip for this check. The
 * address is Fastify's request.ip: the peer, or X-Forwarded-For behind a TRUSTED_PROXIES proxy only.
 */
@Injectable()
export class UnauthenticatedRequestThrottle {
  private readonly limit: number;
  /** Address → when its window ends (ms epoch), for the addresses this replica saw go over their budget. */
  private readonly blockedUntil = new Map<string, number>();

  constructor(
    private readonly storage: RedisThrottlerStorage,
    env: GatewayEnv,
  ) {
    this.limit = env.RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE;
  }

  /** Before the key is looked up: an address over its budget gets 429 at once. */
  refuseIfOverBudget(address: string): void {
    const until = this.blockedUntil.get(address);
    if (until === undefined) return;
    const msLeft = until - Date.now();
    if (msLeft <= 0) {
      this.blockedUntil.delete(address);
      return;
    }
    throw new UnauthenticatedRateLimitedError(this.limit, Math.ceil(msLeft / 1000));
  }

  /** The request had no valid key: counted; the one that goes over the budget gets 429 instead of 401. */
  async countFailure(address: string): Promise<void> {
    const counted = await this.storage.increment(keyOf(address), WINDOW_MS, this.limit, 0, 'unauthenticated');
    if (!counted.isBlocked) return;
    this.block(address, counted.timeToBlockExpire * 1000);
    throw new UnauthenticatedRateLimitedError(this.limit, counted.timeToBlockExpire);
  }

  private block(address: string, forMs: number): void {
    const now = Date.now();
    if (this.blockedUntil.size >= BLOCKED_ADDRESSES_SWEEP_AT) {
      for (const [blocked, until] of this.blockedUntil) if (until <= now) this.blockedUntil.delete(blocked);
    }
    this.blockedUntil.set(address, now + forMs);
  }
}

function keyOf(address: string): string {
  return `unauthenticated:ip:${address}`;
}
