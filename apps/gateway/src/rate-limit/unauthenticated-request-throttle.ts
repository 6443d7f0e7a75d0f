import { Injectable } from '@nestjs/common';
import { GatewayEnv } from '@kiln/config';
import { UnauthenticatedRateLimitedError } from './rate-limit.errors';
import { RedisThrottlerStorage } from './redis-throttler-storage';

const WINDOW_MS = 60_000;

/**
 * The per-client-address budget of requests without a valid API key (RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE). The
 * per-key limit cannot cover them (there is no key to count against), so without this an attacker could spray
 * keys unthrottled. Used by ApiKeyGuard: an address over its budget is refused before any key lookup, and each
 * missing or invalid key counts. The address is Fastify's request.ip: the peer, or X-Forwarded-For behind a
 * TRUSTED_PROXIES proxy only.
 */
@Injectable()
export class UnauthenticatedRequestThrottle {
  private readonly limit: number;

  constructor(
    private readonly storage: RedisThrottlerStorage,
    env: GatewayEnv,
  ) {
    this.limit = env.RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE;
  }

  /** Before the key is looked up: an address already over its budget gets 429 at once. */
  async refuseIfOverBudget(address: string): Promise<void> {
    if ((await this.storage.hits(keyOf(address))) > this.limit) throw new UnauthenticatedRateLimitedError(this.limit, WINDOW_MS / 1000);
  }

  /** The request had no valid key: counted; the one that goes over the budget gets 429 instead of 401. */
  async countFailure(address: string): Promise<void> {
    const counted = await this.storage.increment(keyOf(address), WINDOW_MS, this.limit, 0, 'unauthenticated');
    if (counted.isBlocked) throw new UnauthenticatedRateLimitedError(this.limit, counted.timeToBlockExpire);
  }
}

function keyOf(address: string): string {
  return `unauthenticated:ip:${address}`;
}
