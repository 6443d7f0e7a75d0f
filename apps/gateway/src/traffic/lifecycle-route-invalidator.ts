import { Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { JSONCodec, Subscription } from 'nats';
import { NatsConnectionHolder, SANDBOX_EVENTS_SUBJECT_PREFIX, SandboxLifecycleEvent } from '@kiln/messaging';
import { SandboxRouteCache } from './sandbox-route.cache';

const codec = JSONCodec<SandboxLifecycleEvent>();

/**
 * Drops a sandbox's cached route as soon as a lifecycle event about it is published (destroyed, crashed, exited on
 * its host; any state transition in the scheduler: killed, timed out, paused, resumed elsewhere). The gateway's own
 * DELETE handler drops the route it kills, but a timeout, a crash or a reconcile happens elsewhere, and so do kills
 * through another gateway replica: without this, each replica would route to the old host until ROUTE_TTL_MS.
 *
 * A plain subscription on the events' subjects, not a JetStream consumer: every replica needs every event, and
 * one missed while NATS was away costs no more than the TTL already allows.
 */
@Injectable()
export class LifecycleRouteInvalidator implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('traffic');
  private subscription?: Subscription;

  constructor(
    private readonly nats: NatsConnectionHolder,
    private readonly routes: SandboxRouteCache,
  ) {}

  onApplicationBootstrap(): void {
    this.subscription = this.nats.nc.subscribe(`${SANDBOX_EVENTS_SUBJECT_PREFIX}.>`, {
      callback: (error, message) => {
        if (error) return this.logger.warn(`sandbox lifecycle subscription failed: ${error.message}`);
        let event: SandboxLifecycleEvent;
        try {
          event = codec.decode(message.data);
        } catch {
          return this.logger.warn(`unreadable sandbox lifecycle event on ${message.subject}`);
        }
        // Every event may change where, or whether, the sandbox's traffic goes; a needless drop costs one lookup.
        if (typeof event.sandboxId === 'string') this.routes.invalidate(event.sandboxId);
      },
    });
  }

  onApplicationShutdown(): void {
    this.subscription?.unsubscribe();
  }
}
