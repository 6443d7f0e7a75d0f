import { Controller, UseFilters } from '@nestjs/common';
import { EventPattern, MessagePattern, Payload } from '@nestjs/microservices';
import { HostHeartbeat, HostRegistration, HostRegistrationReply, Subjects } from '@kiln/messaging';
import { HostRegistryService } from './host-registry.service';
import { SchedulerRpcExceptionFilter } from '../rpc/scheduler-rpc-exception.filter';

@Controller()
@UseFilters(SchedulerRpcExceptionFilter)
export class HostsController {
  constructor(private readonly registry: HostRegistryService) {}

  @MessagePattern(Subjects.hostRegister)
  register(@Payload() registration: HostRegistration): Promise<HostRegistrationReply> {
    return this.registry.register(registration);
  }

  @EventPattern(Subjects.hostHeartbeat)
  async heartbeat(@Payload() heartbeat: HostHeartbeat): Promise<void> {
    if (typeof heartbeat?.hostId !== 'string' || typeof heartbeat.usage !== 'object') return;
    await this.registry.heartbeat(heartbeat);
  }
}
