import { Controller } from '@nestjs/common';
import { EventPattern, Payload } from '@nestjs/microservices';
import { HostHeartbeat, Subjects } from '@kiln/messaging';
import { HostLivenessService } from './host-liveness.service';

@Controller()
export class HeartbeatController {
  constructor(private readonly liveness: HostLivenessService) {}

  @EventPattern(Subjects.hostHeartbeat)
  onHeartbeat(@Payload() heartbeat: HostHeartbeat): void {
    if (typeof heartbeat?.hostId !== 'string' || typeof heartbeat.usage?.sandboxes !== 'number') return;
    this.liveness.record(heartbeat);
  }
}
