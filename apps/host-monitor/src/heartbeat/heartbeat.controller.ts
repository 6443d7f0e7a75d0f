import { Controller, Logger } from '@nestjs/common';
import { Ctx, EventPattern, NatsContext, Payload } from '@nestjs/microservices';
import { HostHeartbeat, Subjects, hostIdOfHeartbeatSubject } from '@kiln/messaging';
import { FleetService } from '../fleet/fleet.service';

function isResources(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return false;
  const { vcpus, memoryMib, sandboxes } = value as Record<string, unknown>;
  return typeof vcpus === 'number' && typeof memoryMib === 'number' && typeof sandboxes === 'number';
}

/** Heartbeats: thousands a second across a fleet, so memory only (FleetService flushes them to KV in batches). */
@Controller()
export class HeartbeatController {
  private readonly logger = new Logger(HeartbeatController.name);

  constructor(private readonly fleet: FleetService) {}

  @EventPattern(Subjects.hostHeartbeat)
  onHeartbeat(@Payload() heartbeat: HostHeartbeat, @Ctx() context: NatsContext): void {
    if (typeof heartbeat?.hostId !== 'string' || !isResources(heartbeat.capacity) || !isResources(heartbeat.usage) || !Array.isArray(heartbeat.templates)) {
      this.logger.warn(`malformed heartbeat on ${context.getSubject()} ignored`);
      return;
    }
    // Only the subject's host id is vouched for (by the NATS permissions): a heartbeat about another host is forged.
    const subjectHostId = hostIdOfHeartbeatSubject(context.getSubject());
    if (heartbeat.hostId !== subjectHostId) {
      this.logger.warn(`heartbeat for host ${heartbeat.hostId} sent on the subject of host ${String(subjectHostId)} ignored`);
      return;
    }
    if (!this.fleet.heartbeat(heartbeat)) this.logger.debug(`heartbeat from unregistered host ${heartbeat.hostId} ignored`);
  }
}
