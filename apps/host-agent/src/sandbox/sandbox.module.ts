import { DynamicModule, Module } from '@nestjs/common';
import { HostResourceModules } from '../host-modules';
import { VmmModule } from '../vmm';
import { SandboxManager } from './sandbox-manager.service';

@Module({})
export class SandboxModule {
  static register(host: HostResourceModules): DynamicModule {
    return {
      module: SandboxModule,
      imports: [host.network, host.rootfs, host.templates, host.snapshots, host.clones, VmmModule],
      providers: [SandboxManager],
      exports: [SandboxManager],
    };
  }
}
