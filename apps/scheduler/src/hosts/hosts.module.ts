import { Module } from '@nestjs/common';
import { HostAgentClients } from './host-agent-clients';

/** Calls to host agents. Which hosts exist and are alive is the host monitor's (the fleet view follows it). */
@Module({
  providers: [HostAgentClients],
  exports: [HostAgentClients],
})
export class HostsModule {}
