import { Module } from '@nestjs/common';
import { FleetModule } from '../fleet/fleet.module';
import { PlacementService } from './placement.service';

@Module({ imports: [FleetModule], providers: [PlacementService], exports: [PlacementService] })
export class PlacementModule {}
