import { DynamicModule, Module } from '@nestjs/common';
import { ConfigModule, SchedulerEnv } from '@kiln/config';
import { DbModule } from '@kiln/db';
import { MessagingModule, natsAuthOf } from '@kiln/messaging';
import { TelemetryModule } from '@kiln/telemetry';
import { FleetModule } from './fleet/fleet.module';
import { HostsModule } from './hosts/hosts.module';
import { LifecycleModule } from './lifecycle/lifecycle.module';
import { PingController } from './ping/ping.controller';
import { ReconcileModule } from './reconcile/reconcile.module';

export const SERVICE_NAME = 'scheduler';

@Module({})
export class AppModule {
  static forRoot(env: SchedulerEnv): DynamicModule {
    return {
      module: AppModule,
      imports: [
        ConfigModule.forRoot(SchedulerEnv, env),
        TelemetryModule.forRoot({ service: SERVICE_NAME, logLevel: env.LOG_LEVEL }),
        DbModule.forRoot({ databaseUrl: env.DATABASE_URL, migrate: true }),
        MessagingModule.forRoot({ natsUrl: env.NATS_URL, name: SERVICE_NAME, auth: natsAuthOf(env) }),
        FleetModule,
        HostsModule,
        LifecycleModule,
        ReconcileModule,
      ],
      controllers: [PingController],
    };
  }
}
