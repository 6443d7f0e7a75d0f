export * from './health/dependency-health.service';
export * from './health/health.controller';
export * from './metrics/metrics-registry';
export * from './metrics/metrics.controller';
export * from './logging/logger-options';
export * from './telemetry.module';
export * from './service-bootstrap';
