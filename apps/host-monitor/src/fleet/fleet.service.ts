import { Inject, Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown, Optional } from '@nestjs/common';
import { HostMonitorEnv } from '@kiln/config';
import type { HostAdminState, HostHeartbeat, HostStateEvent, HostView } from '@kiln/messaging';
import { FleetMetrics } from './fleet-metrics';
import { FleetPublisher } from './fleet-publisher';
import { type CreateOutcome, FleetClock, FleetRegistration, FleetState, FleetTransition, SYSTEM_CLOCK, isLive } from './fleet-state';

/** Injection token of the fleet's clock (tests may provide their own; default: the system clock). */
export const FLEET_CLOCK = Symbol('FLEET_CLOCK');

/** How often silence is turned into state (the plan's 1 s: thresholds are whole seconds). */
export const SWEEP_INTERVAL_MS = 1_000;

/**
 * The fleet: FleetState (memory, the state machine) plus where its changes go (FleetPublisher). Heartbeats only touch
 * memory and are written to KV in batches every HOST_VIEW_FLUSH_MS, which keeps the monitor well above thousands of
 * heartbeats a second; a transition is written (KV, DB, event) at once. A host's writes run one after the other (see
 * `serially`), so its KV entries and events are never reordered.
 */
@Injectable()
export class FleetService implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(FleetService.name);
  readonly state: FleetState;
  private readonly clock: FleetClock;
  private sweepTimer?: NodeJS.Timeout;
  private flushTimer?: NodeJS.Timeout;
  /** Each host's last queued write: a host's writes run one after the other, different hosts' side by side. */
  private readonly hostWrites = new Map<string, Promise<unknown>>();
  private flushPending = false;
  private started = false;
  private markStarted!: () => void;
  /** Resolves once the previous monitor's hosts are restored; handlers wait for it. */
  private readonly startup = new Promise<void>((resolve) => (this.markStarted = resolve));

  constructor(
    private readonly env: HostMonitorEnv,
    private readonly publisher: FleetPublisher,
    private readonly metrics: FleetMetrics,
    @Optional() @Inject(FLEET_CLOCK) clock?: FleetClock,
  ) {
    this.clock = clock ?? SYSTEM_CLOCK;
    this.state = new FleetState(
      { unhealthyAfterMs: env.HOST_UNHEALTHY_AFTER_SECONDS * 1000, deadAfterMs: env.HOST_DEAD_AFTER_SECONDS * 1000 },
      this.clock,
    );
  }

  async onApplicationBootstrap(): Promise<void> {
    await this.publisher.ensure();
    const known = await this.publisher.loadKnownHosts();
    this.state.restore(known);
    this.metrics.observe(() => this.state.views());
    this.sweepTimer = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS);
    this.flushTimer = setInterval(() => void this.flush(), this.env.HOST_VIEW_FLUSH_MS);
    this.sweepTimer.unref();
    this.flushTimer.unref();
    this.started = true;
    this.markStarted();
    if (known.length) this.logger.log(`restored ${known.length} host(s); each has a full heartbeat window from now`);
  }

  async onApplicationShutdown(): Promise<void> {
    clearInterval(this.sweepTimer);
    clearInterval(this.flushTimer);
    await this.flush();
    await this.settled();
  }

  /**
   * Records an authenticated registration: the DB row first (it holds the credential hash the reply hands out, so a
   * failure fails the registration; written outside the queue, so registrations of many hosts overlap), then memory,
   * KV and the `registered` event, after the host's earlier writes.
   */
  async register(registration: FleetRegistration, options: { adminStateIfNew: HostAdminState; credentialHash?: string }): Promise<HostView> {
    await this.startup;
    const known = this.state.get(registration.hostId);
    // A host in memory keeps the admin state its row has (set-status writes it); a new or forgotten one is given its own.
    const adminState = known?.adminState ?? options.adminStateIfNew;
    await this.publisher.persistRegistration(registration, adminState, known ? undefined : adminState, options.credentialHash, new Date(this.clock.now()));
    return this.serially([registration.hostId], async () => {
      const { view, transition } = this.state.register(registration, options.adminStateIfNew);
      this.count(transition);
      this.logger.log(`host ${view.hostId} registered at ${view.grpcAddress} (${view.acceleration}), ${view.state}`);
      await this.writeViews(this.state.takeDirtyOf(view.hostId));
      await this.announce(transition);
      return view;
    });
  }

  /** A heartbeat whose subject named its host: false for a host the monitor does not know (ignored). */
  heartbeat(heartbeat: HostHeartbeat): boolean {
    if (!this.started) return false;
    const { known, transition } = this.state.heartbeat(heartbeat);
    if (!known) return false;
    this.metrics.heartbeats.inc();
    const sentAt = Date.parse(heartbeat.at);
    if (Number.isFinite(sentAt)) this.metrics.heartbeatLagSeconds.observe(Math.max(0, this.clock.now() - sentAt) / 1000);
    if (transition) void this.applyTransitions([transition]);
    return true;
  }

  /** Turns silence into state (every SWEEP_INTERVAL_MS; public for tests). */
  sweep(): FleetTransition[] {
    if (!this.started) return [];
    const transitions = this.state.sweep();
    if (transitions.length) void this.applyTransitions(transitions);
    return transitions;
  }

  /** The operator's intent: recorded in the DB first (a failure changes nothing), then memory, KV and the event. */
  async setAdminState(hostId: string, adminState: HostAdminState): Promise<HostView> {
    await this.startup;
    return this.serially([hostId], async () => {
      const current = this.state.require(hostId);
      const nextState = isLive(current.state) ? adminState : current.state;
      await this.publisher.persistState(hostId, nextState, adminState, new Date(this.clock.now()));
      const { view, transition } = this.state.setAdminState(hostId, adminState);
      await this.writeViews(this.state.takeDirtyOf(hostId));
      if (transition) {
        this.count(transition);
        this.logger.log(`host ${hostId}: ${transition.from} → ${transition.to} (${transition.reason})`);
        await this.announce(transition);
      }
      return view;
    });
  }

  /**
   * Takes a host out of the fleet (refused while it is live with sandboxes): DB row `offline` without credential,
   * KV entry deleted, a `removed` event.
   */
  async remove(hostId: string): Promise<void> {
    await this.startup;
    await this.serially([hostId], async () => {
      this.state.assertRemovable(hostId);
      const at = new Date(this.clock.now());
      await this.publisher.persistRemoval(hostId, at);
      const view = this.state.remove(hostId);
      await this.publisher.deleteView(hostId);
      this.metrics.transitions.inc({ from: view.state, to: 'removed' });
      this.logger.log(`host ${hostId} removed from the fleet (was ${view.state})`);
      await this.announce({ kind: 'removed', hostId, from: view.state, to: 'removed', reason: 'removed by an operator', at: at.toISOString() });
    });
  }

  /** A sandbox create on the host ended (its `created` or `create_failed` lifecycle event). */
  countCreate(hostId: string, outcome: CreateOutcome): void {
    this.state.countCreate(hostId, outcome);
  }

  views(): HostView[] {
    return this.state.views();
  }

  /** The host's view, or HostNotFoundError. */
  view(hostId: string): HostView {
    return this.state.require(hostId);
  }

  /** Writes the views heartbeats changed to KV (every HOST_VIEW_FLUSH_MS; public for tests and benchmarks). */
  async flush(): Promise<void> {
    if (this.flushPending) return;
    const changed = this.state.takeDirty();
    if (!changed.length) return;
    this.flushPending = true;
    try {
      await this.serially(
        changed.map((c) => c.hostId),
        () => this.writeViews(changed),
      );
    } finally {
      this.flushPending = false;
    }
  }

  /** Resolves once every write queued so far is done (tests and benchmarks). */
  async settled(): Promise<void> {
    await Promise.all([...this.hostWrites.values()].map((write) => write.catch(() => undefined)));
  }

  private applyTransitions(transitions: FleetTransition[]): Promise<void> {
    for (const transition of transitions) {
      this.count(transition);
      const line = `host ${transition.hostId}: ${transition.from} → ${transition.to} (${transition.reason})`;
      if (transition.to === 'unhealthy' || transition.to === 'dead') this.logger.warn(line);
      else this.logger.log(line);
    }
    // Snapshots taken now, in order: the queue writes them before anything that changes later.
    const changed = this.state.takeDirty();
    const adminStates = new Map(transitions.map((t) => [t.hostId, this.state.get(t.hostId)?.adminState ?? 'ready'] as const));
    return this.serially([...new Set([...changed.map((c) => c.hostId), ...transitions.map((t) => t.hostId)])], async () => {
      await this.writeViews(changed);
      for (const transition of transitions) {
        await this.publisher
          .persistState(transition.hostId, transition.to, adminStates.get(transition.hostId)!, new Date(transition.at))
          .catch((error) => this.logger.error(`recording host ${transition.hostId} ${transition.to} in the database failed: ${String(error)}`));
        await this.announce(transition);
      }
    }).catch((error) => this.logger.error(`applying host transitions failed: ${String(error)}`));
  }

  private async writeViews(changed: { hostId: string; json: string }[]): Promise<void> {
    if (!changed.length) return;
    const failed = await this.publisher.putViews(changed);
    // Written again at the next flush, with whatever the view is by then.
    for (const hostId of failed) this.state.markDirty(hostId);
  }

  /** Events are durable once published; a failed publish is logged (the scheduler's reconcile is the backstop). */
  private async announce(event: HostStateEvent): Promise<void> {
    await this.publisher
      .publishEvent(event)
      .catch((error) => this.logger.error(`publishing host event ${event.hostId} → ${event.to} failed: ${String(error)}`));
  }

  private count(transition: FleetTransition): void {
    this.metrics.transitions.inc({ from: transition.from ?? 'none', to: transition.to });
  }

  /**
   * Runs `work` after every write queued before it for any of `hostIds`, so a host's KV entries and events are never
   * reordered (a later view overwritten by an earlier one); writes of other hosts do not wait for it.
   */
  private serially<T>(hostIds: string[], work: () => Promise<T>): Promise<T> {
    const before = hostIds.map((hostId) => this.hostWrites.get(hostId)).filter((write) => write !== undefined);
    const run = (before.length ? Promise.all(before.map((write) => write.catch(() => undefined))) : Promise.resolve()).then(work);
    const tail = run.catch(() => undefined);
    for (const hostId of hostIds) this.hostWrites.set(hostId, tail);
    void tail.then(() => {
      for (const hostId of hostIds) if (this.hostWrites.get(hostId) === tail) this.hostWrites.delete(hostId);
    });
    return run;
  }
}
