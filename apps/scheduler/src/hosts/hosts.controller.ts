import { Controller, UseFilters } from '@nestjs/common';
import { Ctx, EventPattern, MessagePattern, NatsContext, Payload } from '@nestjs/microservices';
import { HostHeartbeat, HostRegistration, HostRegistrationReply, Subjects, hostIdOfHeartbeatSubject, hostIdOfRegisterSubject } from '@kiln/messaging';
import { HostRegistryService } from './host-registry.service';
import { SchedulerRpcExceptionFilter } from '../rpc/scheduler-rpc-exception.filter';

@Controller()
@UseFilters(SchedulerRpcExceptionFilter)
export class HostsController {
  constructor(private readonly registry: HostRegistryService) {}

  @MessagePattern(Subjects.hostRegister)
  register(@Payload() registration: HostRegistration, @Ctx() context: NatsContext): Promise<HostRegistrationReply> {
    return this.registry.register(registration, hostIdOfRegisterSubject(context.getSubject()));
  }

  @EventPattern(Subjects.hostHeartbeat)
  async heartbeat(@Payload() heartbeat: HostHeartbeat, @Ctx() context: NatsContext): Promise<void> {
    if (typeof heartbeat?.hostId !== 'string' || typeof heartbeat.usage !== 'object') return;
    await this.registry.heartbeat(heartbeat, hostIdOfHeartbeatSubject(context.getSubject()));
  }
}
