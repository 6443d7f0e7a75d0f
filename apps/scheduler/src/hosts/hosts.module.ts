import { Module } from '@nestjs/common';
import { HostAgentClients } from './host-agent-clients';
import { HostRegistryService } from './host-registry.service';
import { HostsController } from './hosts.controller';

@Module({
  controllers: [HostsController],
  providers: [HostRegistryService, HostAgentClients],
  exports: [HostRegistryService, HostAgentClients],
})
export class HostsModule {}
