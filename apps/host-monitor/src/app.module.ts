import { DynamicModule, Module } from '@nestjs/common';
import { ConfigModule, HostMonitorEnv } from '@kiln/config';
import { DbModule } from '@kiln/db';
import { MessagingModule, natsAuthOf } from '@kiln/messaging';
import { TelemetryModule } from '@kiln/telemetry';
import { HostHealthModule } from './host-health/host-health.module';

export const SERVICE_NAME = 'host-monitor';

@Module({})
export class AppModule {
  static forRoot(env: HostMonitorEnv): DynamicModule {
    return {
      module: AppModule,
      imports: [
        ConfigModule.forRoot(HostMonitorEnv, env),
        TelemetryModule.forRoot({ service: SERVICE_NAME, logLevel: env.LOG_LEVEL }),
        DbModule.forRoot({ databaseUrl: env.DATABASE_URL, migrate: true }),
        MessagingModule.forRoot({ natsUrl: env.NATS_URL, name: SERVICE_NAME, auth: natsAuthOf(env), jetStream: false }),
        HostHealthModule,
      ],
    };
  }
}
