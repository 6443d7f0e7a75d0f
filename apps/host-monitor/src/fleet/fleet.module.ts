import { Module } from '@nestjs/common';
import { HostEventStream } from '@kiln/messaging';
import { HeartbeatController } from '../heartbeat/heartbeat.controller';
import { FleetMetrics } from './fleet-metrics';
import { FleetPublisher } from './fleet-publisher';
import { FleetService } from './fleet.service';
import { SandboxCreationsListener } from './sandbox-creations.listener';

/** The fleet's state machine, where it is written (KV, events, DB), and what feeds it (heartbeats, create events). */
@Module({
  controllers: [HeartbeatController],
  providers: [FleetService, FleetPublisher, FleetMetrics, SandboxCreationsListener, HostEventStream],
  exports: [FleetService],
})
export class FleetModule {}
