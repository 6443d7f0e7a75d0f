import { Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import { ThrottlerStorage } from '@nestjs/throttler';
import IORedis from 'ioredis';
import { GatewayEnv, describeError } from '@kiln/config';
import { DependencyHealth } from '@kiln/telemetry';
import { RateLimitUnavailableError } from './rate-limit.errors';

type ThrottlerStorageRecord = Awaited<ReturnType<ThrottlerStorage['increment']>>;

// Fixed window: the first hit in a window starts its expiry; returns [hits, ms left].
const INCREMENT_WINDOW = `
local hits = redis.call('INCR', KEYS[1])
if hits == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {hits, ttl}`;

/** The longest a request waits on the rate-limit counter before the counter counts as unreachable. */
const RATE_LIMIT_REDIS_DEADLINE_MS = 500;

/**
 * Rate-limit counters in Redis, so every gateway replica enforces one shared
 * per-key limit. When Redis is unreachable the limiter fails closed: counting
 * throws RateLimitUnavailableError (503), because an outage (or an attacker
 * who causes one) must not switch every limit off; RATE_LIMIT_FAIL_OPEN=true
 * lets requests through uncounted instead. /health reports it either way. An
 * outage must not slow requests down: with no offline queue a command fails at
 * once while Redis is away, and any call is cut off after
 * RATE_LIMIT_REDIS_DEADLINE_MS (a Redis that accepts but does not answer).
 */
@Injectable()
export class RedisThrottlerStorage implements ThrottlerStorage, OnApplicationShutdown {
  private readonly logger = new Logger('rate-limit');
  private readonly redis: IORedis;
  private lastFailureLoggedAt = 0;
  private readonly failOpen: boolean;

  constructor(env: GatewayEnv, health: DependencyHealth) {
    this.failOpen = env.RATE_LIMIT_FAIL_OPEN;
    this.redis = new IORedis(env.REDIS_URL, {
      lazyConnect: true,
      connectTimeout: 2_000,
      maxRetriesPerRequest: 1,
      enableOfflineQueue: false,
      keyPrefix: 'kiln:gateway:ratelimit:',
    });
    this.redis.on('error', (error) => this.logger.debug(`redis: ${describeError(error)}`));
    health.register('redis', () => this.redis.ping());
  }

  async increment(key: string, ttl: number, limit: number, _blockDuration: number, _name: string): Promise<ThrottlerStorageRecord> {
    try {
      const [hits, msLeft] = await withDeadline(this.count(key, ttl), RATE_LIMIT_REDIS_DEADLINE_MS);
      const secondsLeft = Math.max(1, Math.ceil(msLeft / 1000));
      const isBlocked = hits > limit;
      return { totalHits: hits, timeToExpire: secondsLeft, isBlocked, timeToBlockExpire: isBlocked ? secondsLeft : 0 };
    } catch (error) {
      this.unreachable(error);
      return { totalHits: 0, timeToExpire: Math.ceil(ttl / 1000), isBlocked: false, timeToBlockExpire: 0 };
    }
  }

  /** Redis could not count: throws RateLimitUnavailableError unless configured to fail open (then returns). */
  private unreachable(error: unknown): void {
    const now = Date.now();
    if (now - this.lastFailureLoggedAt > 30_000) {
      this.lastFailureLoggedAt = now;
      const outcome = this.failOpen ? 'requests pass uncounted (RATE_LIMIT_FAIL_OPEN)' : 'API requests are refused with 503';
      this.logger.warn(`rate-limit Redis unreachable, ${outcome}: ${describeError(error)}`);
    }
    if (!this.failOpen) throw new RateLimitUnavailableError();
  }

  private async count(key: string, ttl: number): Promise<[number, number]> {
    if (this.redis.status === 'wait') await this.redis.connect();
    return (await this.redis.eval(INCREMENT_WINDOW, 1, key, String(ttl))) as [number, number];
  }

  async onApplicationShutdown(): Promise<void> {
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}

async function withDeadline<T>(operation: Promise<T>, deadlineMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      operation,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`Redis did not answer within ${deadlineMs} ms`)), deadlineMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
