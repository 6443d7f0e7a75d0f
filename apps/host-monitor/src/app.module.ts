import { DynamicModule, Module } from '@nestjs/common';
import { ConfigModule, HostMonitorEnv } from '@kiln/config';
import { DbModule } from '@kiln/db';
import { MessagingModule, natsAuthOf } from '@kiln/messaging';
import { TelemetryModule } from '@kiln/telemetry';
import { AdminModule } from './admin/admin.module';
import { FleetModule } from './fleet/fleet.module';
import { RegistrationModule } from './registration/registration.module';

export const SERVICE_NAME = 'host-monitor';

/**
 * The one owner of host liveness. Run exactly one replica: the fleet's state lives in its memory (KV and the DB are
 * written from it), and two monitors would race each other's transitions.
 */
@Module({})
export class AppModule {
  static forRoot(env: HostMonitorEnv): DynamicModule {
    return {
      module: AppModule,
      imports: [
        ConfigModule.forRoot(HostMonitorEnv, env),
        TelemetryModule.forRoot({ service: SERVICE_NAME, logLevel: env.LOG_LEVEL }),
        DbModule.forRoot({ databaseUrl: env.DATABASE_URL, migrate: true }),
        // JetStream: the host events stream and the hosts KV bucket are the monitor's.
        MessagingModule.forRoot({ natsUrl: env.NATS_URL, name: SERVICE_NAME, auth: natsAuthOf(env), jetStream: true }),
        FleetModule,
        RegistrationModule,
        AdminModule,
      ],
    };
  }
}
