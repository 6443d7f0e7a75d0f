import { Controller, Logger } from '@nestjs/common';
import { Ctx, EventPattern, NatsContext, Payload } from '@nestjs/microservices';
import { HostHeartbeat, Subjects, hostIdOfHeartbeatSubject } from '@kiln/messaging';
import { HostLivenessService } from './host-liveness.service';

@Controller()
export class HeartbeatController {
  private readonly logger = new Logger(HeartbeatController.name);

  constructor(private readonly liveness: HostLivenessService) {}

  @EventPattern(Subjects.hostHeartbeat)
  onHeartbeat(@Payload() heartbeat: HostHeartbeat, @Ctx() context: NatsContext): void {
    if (typeof heartbeat?.hostId !== 'string' || typeof heartbeat.usage?.sandboxes !== 'number') return;
    // Only the subject's host id is vouched for (by the NATS permissions): a heartbeat about another host is forged.
    const subjectHostId = hostIdOfHeartbeatSubject(context.getSubject());
    if (heartbeat.hostId !== subjectHostId) {
      this.logger.warn(`heartbeat for host ${heartbeat.hostId} sent on the subject of host ${String(subjectHostId)} ignored`);
      return;
    }
    this.liveness.record(heartbeat);
  }
}
