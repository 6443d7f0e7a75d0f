import { Injectable, OnModuleInit } from '@nestjs/common';
import { MessagingClient, Subjects } from '@kiln/messaging';
import { DependencyHealth } from '@kiln/telemetry';

const SCHEDULER_PING_TIMEOUT_MS = 2_000;

/** /health reports the scheduler as a dependency: without it no sandbox call can succeed. */
@Injectable()
export class SchedulerHealth implements OnModuleInit {
  constructor(
    private readonly health: DependencyHealth,
    private readonly messaging: MessagingClient,
  ) {}

  onModuleInit(): void {
    this.health.register('scheduler', () => this.messaging.request(Subjects.schedulerPing, {}, SCHEDULER_PING_TIMEOUT_MS));
  }
}
