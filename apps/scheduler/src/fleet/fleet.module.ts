import { Module } from '@nestjs/common';
import { FleetViewService } from './fleet-view.service';

@Module({ providers: [FleetViewService], exports: [FleetViewService] })
export class FleetModule {}
