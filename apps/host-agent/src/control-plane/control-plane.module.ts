import { DynamicModule, Module } from '@nestjs/common';
import { HostAgentGrpcController } from '../grpc/host-agent.grpc.controller';
import { HostResourceModules } from '../host-modules';
import { VmmModule } from '../vmm';
import { ControlPlaneLink } from './control-plane-link.service';
import { HostInfoService } from './host-info.service';

/** Everything the control plane talks to: the gRPC HostAgent service, registration and heartbeats. */
@Module({})
export class ControlPlaneModule {
  static register(host: HostResourceModules, sandboxes: DynamicModule): DynamicModule {
    return {
      module: ControlPlaneModule,
      imports: [host.network, host.templates, host.clones, host.templateBuilds, VmmModule, sandboxes],
      controllers: [HostAgentGrpcController],
      providers: [HostInfoService, ControlPlaneLink],
      exports: [HostInfoService],
    };
  }
}

