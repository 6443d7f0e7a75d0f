import { Module } from '@nestjs/common';
import { RedisConnection } from './redis-connection';
import { SandboxTimeouts } from './sandbox-timeouts';

@Module({ providers: [RedisConnection, SandboxTimeouts], exports: [SandboxTimeouts, RedisConnection] })
export class TimeoutsModule {}
