import { DynamicModule, Global, Module } from '@nestjs/common';
import { LoggerModule } from 'nestjs-pino';
import { DependencyHealth } from './health/dependency-health.service';
import { HealthController } from './health/health.controller';
import { nestLoggerParams } from './logging/logger-options';
import { MetricsController } from './metrics/metrics.controller';
import { MetricsRegistry } from './metrics/metrics-registry';

export interface TelemetryOptions {
  service: string;
  logLevel: string;
}

/** JSON logs, `/metrics` and `/health` for one service. */
@Global()
@Module({})
export class TelemetryModule {
  static forRoot(options: TelemetryOptions): DynamicModule {
    return {
      module: TelemetryModule,
      imports: [LoggerModule.forRoot(nestLoggerParams(options.service, options.logLevel))],
      controllers: [HealthController, MetricsController],
      providers: [
        {
          provide: DependencyHealth,
          useFactory: () => {
            const health = new DependencyHealth();
            health.setService(options.service);
            return health;
          },
        },
        {
          provide: MetricsRegistry,
          useFactory: () => {
            const metrics = new MetricsRegistry();
            metrics.setService(options.service);
            return metrics;
          },
        },
      ],
      exports: [DependencyHealth, MetricsRegistry],
    };
  }
}
