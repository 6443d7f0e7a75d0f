import { Module } from '@nestjs/common';
import { FleetModule } from '../fleet/fleet.module';
import { JoinTokens } from './join-tokens.service';
import { RegistrationController } from './registration.controller';
import { RegistrationService } from './registration.service';

/** Admitting hosts: join tokens, host credentials, registration. */
@Module({
  imports: [FleetModule],
  controllers: [RegistrationController],
  providers: [RegistrationService, JoinTokens],
  exports: [JoinTokens],
})
export class RegistrationModule {}
