import { Module } from '@nestjs/common';
import { HostsModule } from '../hosts/hosts.module';
import { LifecycleModule } from '../lifecycle/lifecycle.module';
import { ReconcileService } from './reconcile.service';

@Module({ imports: [HostsModule, LifecycleModule], providers: [ReconcileService], exports: [ReconcileService] })
export class ReconcileModule {}
