import { Module } from '@nestjs/common';
import { RateLimitModule } from '../rate-limit/rate-limit.module';
import { ApiKeyAuthenticator } from './api-key-authenticator';
import { ApiKeyGuard } from './api-key.guard';

/** API-key authentication. The guard is installed globally by AppModule, ahead of rate limiting. */
@Module({
  // The per-address budget of requests without a valid key.
  imports: [RateLimitModule],
  providers: [ApiKeyAuthenticator, ApiKeyGuard],
  exports: [ApiKeyAuthenticator, ApiKeyGuard],
})
export class AuthModule {}
