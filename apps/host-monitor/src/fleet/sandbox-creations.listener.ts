import { Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import type { Subscription } from 'nats';
import { NatsConnectionHolder, SANDBOX_CREATE_FAILURES_BY_HOSTS, SANDBOX_CREATED_BY_HOSTS, sandboxEventSourceOf } from '@kiln/messaging';
import { FleetService } from './fleet.service';

/**
 * Every host agent's `created` and `create_failed` lifecycle events: E2B's per-node create counters
 * (HostView.createSuccesses, createFails). Plain core-NATS subscriptions (the events are also on JetStream, but a
 * count since start needs no durable consumer).
 */

@Injectable()
export class SandboxCreationsListener implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(SandboxCreationsListener.name);
  private readonly subscriptions: Subscription[] = [];

  constructor(
    private readonly nats: NatsConnectionHolder,
    private readonly fleet: FleetService,
  ) {}

  onApplicationBootstrap(): void {
    this.subscriptions.push(
      this.count(SANDBOX_CREATED_BY_HOSTS, (hostId) => this.fleet.countCreate(hostId, 'succeeded')),
      this.count(SANDBOX_CREATE_FAILURES_BY_HOSTS, (hostId) => this.fleet.countCreate(hostId, 'failed')),
    );
  }

  onApplicationShutdown(): void {
    for (const subscription of this.subscriptions.splice(0)) subscription.unsubscribe();
  }

  private count(subject: string, countFor: (hostId: string) => void): Subscription {
    return this.nats.nc.subscribe(subject, {
      callback: (error, message) => {
        if (error) {
          this.logger.warn(`${subject} subscription: ${String(error)}`);
          return;
        }
        // The subject's host id is vouched for by the NATS permissions; the payload's is not.
        const source = sandboxEventSourceOf(message.subject);
        if (source && source !== 'scheduler') countFor(source.hostId);
      },
    });
  }
}
