import { Module } from '@nestjs/common';
import { HostsModule } from '../hosts/hosts.module';
import { PlacementModule } from '../placement/placement.module';
import { TimeoutsModule } from '../timeouts/timeouts.module';
import { SandboxLifecycleService } from './sandbox-lifecycle.service';
import { SandboxesController } from './sandboxes.controller';

@Module({
  imports: [HostsModule, PlacementModule, TimeoutsModule],
  controllers: [SandboxesController],
  providers: [SandboxLifecycleService],
  exports: [SandboxLifecycleService],
})
export class LifecycleModule {}
