import { Module } from '@nestjs/common';
import { ThrottlerModule, getStorageToken } from '@nestjs/throttler';
import { GatewayEnv } from '@kiln/config';
import { ApiKeyThrottlerGuard } from './api-key-throttler.guard';
import { RedisThrottlerStorage } from './redis-throttler-storage';
import { UnauthenticatedRequestThrottle } from './unauthenticated-request-throttle';

/**
 * Per-API-key rate limiting (RATE_LIMIT_PER_MINUTE) and the per-client-address budget of requests without a valid
 * key (RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE, used by ApiKeyGuard), counted in Redis. The guard is installed by
 * AppModule.
 */
@Module({
  imports: [
    ThrottlerModule.forRootAsync({
      inject: [GatewayEnv],
      useFactory: (env: GatewayEnv) => ({
        throttlers: [{ name: 'default', ttl: 60_000, limit: env.RATE_LIMIT_PER_MINUTE }],
      }),
    }),
  ],
  // Our own storage token binding wins over the in-memory one ThrottlerModule registers.
  providers: [
    RedisThrottlerStorage,
    { provide: getStorageToken(), useExisting: RedisThrottlerStorage },
    ApiKeyThrottlerGuard,
    UnauthenticatedRequestThrottle,
  ],
  exports: [ApiKeyThrottlerGuard, UnauthenticatedRequestThrottle],
})
export class RateLimitModule {}
