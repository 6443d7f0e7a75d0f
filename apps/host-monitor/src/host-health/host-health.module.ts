import { Module } from '@nestjs/common';
import { HeartbeatController } from './heartbeat.controller';
import { HostLivenessService } from './host-liveness.service';

@Module({ controllers: [HeartbeatController], providers: [HostLivenessService], exports: [HostLivenessService] })
export class HostHealthModule {}
