import { Module } from '@nestjs/common';
import { FleetModule } from '../fleet/fleet.module';
import { RegistrationModule } from '../registration/registration.module';
import { AdminController } from './admin.controller';

/** The operator's requests (from the gateway's admin API). */
@Module({ imports: [FleetModule, RegistrationModule], controllers: [AdminController] })
export class AdminModule {}
