import { DynamicModule, Module } from '@nestjs/common';
import { ConfigModule, TemplateBuilderEnv } from '@kiln/config';
import { DbModule } from '@kiln/db';
import { MessagingModule, natsAuthOf } from '@kiln/messaging';
import { TelemetryModule } from '@kiln/telemetry';
import { TemplateBuildModule } from './build/template-build.module';
import { TemplateBuildWorker } from './queue/template-build.worker';
import { TemplateRegistrationService } from './registration/template-registration.service';

export const SERVICE_NAME = 'template-builder';

@Module({})
export class AppModule {
  static forRoot(env: TemplateBuilderEnv): DynamicModule {
    return {
      module: AppModule,
      imports: [
        ConfigModule.forRoot(TemplateBuilderEnv, env),
        TelemetryModule.forRoot({ service: SERVICE_NAME, logLevel: env.LOG_LEVEL }),
        DbModule.forRoot({ databaseUrl: env.DATABASE_URL, migrate: true }),
        // Build logs out, cancellations in; no JetStream.
        MessagingModule.forRoot({ natsUrl: env.NATS_URL, name: SERVICE_NAME, auth: natsAuthOf(env), jetStream: false }),
        TemplateBuildModule,
      ],
      providers: [TemplateRegistrationService, TemplateBuildWorker],
    };
  }
}
