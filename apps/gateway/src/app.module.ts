import { DynamicModule, Module } from '@nestjs/common';
import { APP_FILTER, APP_GUARD } from '@nestjs/core';
import { ConfigModule, GatewayEnv } from '@kiln/config';
import { DbModule } from '@kiln/db';
import { MessagingModule, natsAuthOf } from '@kiln/messaging';
import { TelemetryModule } from '@kiln/telemetry';
import { AdminModule } from './admin/admin.module';
import { ApiKeyGuard } from './auth/api-key.guard';
import { AuthModule } from './auth/auth.module';
import { GatewayHealthModule } from './health/health.module';
import { ApiExceptionFilter } from './http-errors/api-exception.filter';
import { NotSupportedModule } from './not-supported/not-supported.module';
import { OpenApiModule } from './openapi/openapi.module';
import { ApiKeyThrottlerGuard } from './rate-limit/api-key-throttler.guard';
import { RateLimitModule } from './rate-limit/rate-limit.module';
import { SandboxesModule } from './sandboxes/sandboxes.module';
import { TemplatesModule } from './templates/templates.module';
import { TrafficModule } from './traffic/traffic.module';

export const SERVICE_NAME = 'gateway';

@Module({})
export class AppModule {
  static forRoot(env: GatewayEnv): DynamicModule {
    return {
      module: AppModule,
      imports: [
        ConfigModule.forRoot(GatewayEnv, env),
        TelemetryModule.forRoot({ service: SERVICE_NAME, logLevel: env.LOG_LEVEL }),
        // Migrations are advisory-locked and idempotent, so whichever app starts first on a fresh database applies them.
        DbModule.forRoot({ databaseUrl: env.DATABASE_URL, migrate: true }),
        MessagingModule.forRoot({ natsUrl: env.NATS_URL, name: SERVICE_NAME, auth: natsAuthOf(env), jetStream: false }),
        AuthModule,
        RateLimitModule,
        GatewayHealthModule,
        OpenApiModule,
        TrafficModule,
        SandboxesModule,
        TemplatesModule,
        AdminModule,
        NotSupportedModule,
      ],
      providers: [
        { provide: APP_FILTER, useClass: ApiExceptionFilter },
        // Order matters: authenticate first so the rate limit is counted per API key.
        { provide: APP_GUARD, useExisting: ApiKeyGuard },
        { provide: APP_GUARD, useExisting: ApiKeyThrottlerGuard },
      ],
    };
  }
}
