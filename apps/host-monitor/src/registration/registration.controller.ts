import { Controller, UseFilters } from '@nestjs/common';
import { Ctx, MessagePattern, NatsContext, Payload } from '@nestjs/microservices';
import { HostRegistration, HostRegistrationReply, Subjects, hostIdOfRegisterSubject } from '@kiln/messaging';
import { MonitorRpcExceptionFilter } from '../rpc/monitor-rpc-exception.filter';
import { RegistrationService } from './registration.service';

@Controller()
@UseFilters(MonitorRpcExceptionFilter)
export class RegistrationController {
  constructor(private readonly registration: RegistrationService) {}

  @MessagePattern(Subjects.hostRegister)
  register(@Payload() registration: HostRegistration, @Ctx() context: NatsContext): Promise<HostRegistrationReply> {
    return this.registration.register(registration, hostIdOfRegisterSubject(context.getSubject()));
  }
}
