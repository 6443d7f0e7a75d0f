import { Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import type { Subscription } from 'nats';
import { NatsConnectionHolder, SANDBOX_CREATED_BY_HOSTS, sandboxEventSourceOf } from '@kiln/messaging';
import { FleetService } from './fleet.service';

/**
 * Every host agent's `created` lifecycle event: E2B's per-node create counter (HostView.createSuccesses). A plain
 * core-NATS subscription (the events are also on JetStream, but a count since start needs no durable consumer).
 * createFails stays 0: a create that fails during start reaches NATS as `crashed`, which a crash of a running
 * sandbox also is, so the two cannot be told apart here.
 */

@Injectable()
export class SandboxCreationsListener implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(SandboxCreationsListener.name);
  private subscription?: Subscription;

  constructor(
    private readonly nats: NatsConnectionHolder,
    private readonly fleet: FleetService,
  ) {}

  onApplicationBootstrap(): void {
    this.subscription = this.nats.nc.subscribe(SANDBOX_CREATED_BY_HOSTS, {
      callback: (error, message) => {
        if (error) {
          this.logger.warn(`sandbox creations subscription: ${String(error)}`);
          return;
        }
        // The subject's host id is vouched for by the NATS permissions; the payload's is not.
        const source = sandboxEventSourceOf(message.subject);
        if (source && source !== 'scheduler') this.fleet.countCreateSuccess(source.hostId);
      },
    });
  }

  onApplicationShutdown(): void {
    this.subscription?.unsubscribe();
  }
}
