import { Module } from '@nestjs/common';
import { HostsModule } from '../hosts/hosts.module';
import { PlacementModule } from '../placement/placement.module';
import { TimeoutsModule } from '../timeouts/timeouts.module';
import { SandboxLifecycleService } from './sandbox-lifecycle.service';
import { SandboxesController } from './sandboxes.controller';
import { SandboxTokens } from './sandbox-tokens';
import { NamedSnapshotsService } from './named-snapshots.service';

@Module({
  imports: [HostsModule, PlacementModule, TimeoutsModule],
  controllers: [SandboxesController],
  providers: [SandboxLifecycleService, NamedSnapshotsService, SandboxTokens],
  exports: [SandboxLifecycleService],
})
export class LifecycleModule {}
