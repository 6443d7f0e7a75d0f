import { Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { describeError } from '@kiln/config';
import { FleetHostState, HostEventStream, HostStateEvent } from '@kiln/messaging';
import { FleetViewService } from '../fleet/fleet-view.service';
import { LIVE_HOST_STATES, ReconcileService } from './reconcile.service';

/** The durable consumer the scheduler replicas share: each host state event is handled by one of them. */
export const HOST_STATE_CONSUMER = 'scheduler-host-state';

const SILENT_STATES: readonly FleetHostState[] = ['unhealthy', 'dead'];

/**
 * Acts on the host monitor's state changes: a host declared dead takes its running sandboxes with it (`error`,
 * reason host_lost); a host that speaks again after being silent is reconciled at once (whatever it lost is ended,
 * whatever the database ended meanwhile is destroyed on it). Reconcile's periodic pass is the backstop for both.
 */
@Injectable()
export class HostStateEventsService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(HostStateEventsService.name);
  private stopConsuming?: () => Promise<void>;

  constructor(
    private readonly stream: HostEventStream,
    private readonly fleet: FleetViewService,
    private readonly reconcile: ReconcileService,
  ) {}

  async onModuleInit(): Promise<void> {
    this.stopConsuming = await this.stream.consume(HOST_STATE_CONSUMER, (event) => this.onHostStateEvent(event));
  }

  async onApplicationShutdown(): Promise<void> {
    await this.stopConsuming?.();
  }

  /** Throws when the database could not be updated: the event is delivered again. */
  async onHostStateEvent(event: HostStateEvent): Promise<void> {
    if (typeof event?.hostId !== 'string') return;
    if (event.to === 'dead') {
      // A late event must not end the sandboxes of a host that has come back since: the view knows it is live again.
      const now = this.fleet.get(event.hostId);
      if (now && now.state !== 'dead' && Date.parse(now.stateChangedAt) > Date.parse(event.at)) {
        this.logger.log(`host ${event.hostId} was declared dead at ${event.at} but is ${now.state} since ${now.stateChangedAt}: nothing to end`);
        return;
      }
      await this.reconcile.endSandboxesOfLostHost(event.hostId);
      return;
    }
    if (event.to !== 'removed' && LIVE_HOST_STATES.includes(event.to) && event.from !== undefined && SILENT_STATES.includes(event.from)) {
      try {
        await this.reconcile.reconcileHostNow(event.hostId);
      } catch (error) {
        // Not retried through the event: the periodic pass reconciles every live host anyway.
        this.logger.warn(`reconcile of returning host ${event.hostId} failed: ${describeError(error)}`);
      }
    }
  }
}
