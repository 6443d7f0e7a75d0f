import { Module } from '@nestjs/common';
import { SchedulerHealth } from './scheduler-health';

/** Adds the gateway's own dependency checks to @kiln/telemetry's /health (postgres and nats register themselves). */
@Module({ providers: [SchedulerHealth] })
export class GatewayHealthModule {}
