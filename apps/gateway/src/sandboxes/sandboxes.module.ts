import { Module } from '@nestjs/common';
import { TrafficModule } from '../traffic/traffic.module';
import { GuestMetricsClient } from './guest-metrics.client';
import { SandboxesController } from './sandboxes.controller';
import { SandboxesService } from './sandboxes.service';

@Module({
  imports: [TrafficModule],
  controllers: [SandboxesController],
  providers: [SandboxesService, GuestMetricsClient],
  exports: [SandboxesService],
})
export class SandboxesModule {}
