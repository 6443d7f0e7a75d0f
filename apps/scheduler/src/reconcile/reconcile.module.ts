import { Module } from '@nestjs/common';
import { HostEventStream } from '@kiln/messaging';
import { FleetModule } from '../fleet/fleet.module';
import { HostsModule } from '../hosts/hosts.module';
import { LifecycleModule } from '../lifecycle/lifecycle.module';
import { TimeoutsModule } from '../timeouts/timeouts.module';
import { HostStateEventsService } from './host-state-events.service';
import { ReconcileService } from './reconcile.service';

@Module({
  imports: [FleetModule, HostsModule, LifecycleModule, TimeoutsModule],
  providers: [ReconcileService, HostStateEventsService, HostEventStream],
  exports: [ReconcileService],
})
export class ReconcileModule {}
