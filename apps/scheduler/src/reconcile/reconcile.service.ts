import { randomBytes } from 'node:crypto';
import { Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { SandboxState } from '@kiln/contracts';
import { SchedulerEnv, describeError } from '@kiln/config';
import { HostRepository, SandboxRecord, SandboxRepository, isTransitional } from '@kiln/db';
import { FleetHostState, HOST_LOST_REASON, SandboxEventSource, SandboxEventStream, SandboxLifecycleEvent } from '@kiln/messaging';
import { MetricsRegistry } from '@kiln/telemetry';
import { FleetViewService } from '../fleet/fleet-view.service';
import { HostAgentClients } from '../hosts/host-agent-clients';
import { SandboxLifecycleService } from '../lifecycle/sandbox-lifecycle.service';
import { RedisConnection } from '../timeouts/redis-connection';

const PAUSE_STATES: readonly SandboxState[] = [SandboxState.Pausing, SandboxState.Paused, SandboxState.Resuming];

/** Hosts whose agents answer: reconcile compares what they run with the database. */
export const LIVE_HOST_STATES: readonly FleetHostState[] = ['ready', 'draining', 'cordoned'];

/**
 * What a lost host takes with it: sandboxes being created or running there. Paused ones stay paused (their
 * artifacts are on that host, which may come back); pausing and resuming ones are settled by their deadline sweep.
 */
const ENDED_WITH_LOST_HOST: readonly SandboxState[] = [SandboxState.Pending, SandboxState.Starting, SandboxState.Running];

/** One reconcile pass at a time across the scheduler replicas. */
const RECONCILE_LEASE_KEY = 'kiln:scheduler:reconcile-lease';
/** Releases the lease only if this pass still holds it (it may have expired and been taken by another replica). */
const RELEASE_LEASE_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/** Seconds past its expiry before the sweep kills a running sandbox: its timeout job normally does it on time. */
const EXPIRY_GRACE_SECONDS = 10;

export interface ReconcileReport {
  /** Another replica held the reconcile lease: this pass did nothing. */
  skipped?: 'lease-held-elsewhere';
  hostsChecked: number;
  /** Sandboxes ended `error` (host_lost) because their host is dead. */
  hostLost: string[];
  markedGone: string[];
  destroyedOrphans: string[];
  expired: string[];
  /** Rows failed because they were still pending/starting (pausing/resuming) past their deadline. */
  failedPastDeadline: string[];
}

/**
 * Makes Postgres and the hosts agree: a sandbox the host no longer runs is marked
 * ended; a VM the database does not count as live is destroyed. Host lifecycle events
 * (exit, crash) arrive through JetStream and are applied at once.
 *
 * It is also the guarantee behind every deadline, found from the rows alone so that no process has to survive for
 * it: transitional rows past their deadline (plus SANDBOX_RECONCILE_GRACE_MS) are failed and their VMs destroyed,
 * and running rows past their expiry are killed whether or not their timeout job still exists.
 */
@Injectable()
export class ReconcileService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(ReconcileService.name);
  private timer?: NodeJS.Timeout;
  private stopConsuming?: () => Promise<void>;
  private running = false;
  private readonly fixes;

  constructor(
    private readonly env: SchedulerEnv,
    private readonly fleet: FleetViewService,
    private readonly hosts: HostRepository,
    private readonly sandboxes: SandboxRepository,
    private readonly agents: HostAgentClients,
    private readonly lifecycle: SandboxLifecycleService,
    private readonly events: SandboxEventStream,
    private readonly redis: RedisConnection,
    metrics: MetricsRegistry,
  ) {
    this.fixes = metrics.counter('kiln_reconcile_fixes_total', 'Differences repaired by reconcile', ['kind']);
  }

  async onModuleInit(): Promise<void> {
    this.stopConsuming = await this.events.consume('scheduler-host-events', (event, source) => this.onHostEvent(event, source));
    // A pass that fails (Postgres down) is logged and the next one tries again; it must never become an unhandled rejection.
    this.timer = setInterval(() => {
      this.reconcileOnce().catch((error) => this.logger.warn(`reconcile pass failed: ${String(error)}`));
    }, this.env.RECONCILE_INTERVAL_SECONDS * 1000);
    this.timer.unref();
  }

  async onApplicationShutdown(): Promise<void> {
    clearInterval(this.timer);
    await this.stopConsuming?.();
  }

  /**
   * Applies a host's exit or crash event. `source` is the publisher its subject names, which NATS permissions vouch
   * for: only the host that runs the sandbox (its row's host) may end it; any other event about it is ignored.
   */
  async onHostEvent(event: SandboxLifecycleEvent, source: SandboxEventSource | undefined): Promise<void> {
    if (event.kind !== 'exited' && event.kind !== 'crashed') return;
    if (typeof event.sandboxId !== 'string') return;
    const sandbox = await this.sandboxes.find(event.sandboxId);
    if (!sandbox) return;
    const fromHost = source && source !== 'scheduler' ? source.hostId : undefined;
    if (fromHost === undefined || fromHost !== sandbox.hostId) {
      this.logger.warn(
        `${event.kind} event for ${event.sandboxId} (on host ${String(sandbox.hostId)}) from ${fromHost === undefined ? 'no host' : `host ${fromHost}`} ignored`,
      );
      return;
    }
    if (PAUSE_STATES.includes(sandbox.state as SandboxState)) {
      // A paused sandbox has no VM to exit (its VMM stops as part of the pause); one pausing or resuming is settled by
      // whoever drives that transition (or the deadline sweep) from what the host says it has, not from this event.
      this.logger.log(`${event.kind} event for ${event.sandboxId} ignored: it is ${sandbox.state}`);
      return;
    }
    if (event.kind === 'exited') {
      if (await this.lifecycle.markGone(event.sandboxId, SandboxState.Killed, event.reason ?? 'sandbox exited')) this.fixes.inc({ kind: 'exited' });
    } else if (event.kind === 'crashed') {
      if (await this.lifecycle.markGone(event.sandboxId, SandboxState.Error, event.reason ?? 'sandbox crashed')) this.fixes.inc({ kind: 'crashed' });
    }
  }

  async reconcileOnce(): Promise<ReconcileReport> {
    const report: ReconcileReport = { hostsChecked: 0, hostLost: [], markedGone: [], destroyedOrphans: [], expired: [], failedPastDeadline: [] };
    if (this.running) return report;
    this.running = true;
    let lease: string | undefined;
    try {
      const acquired = await this.acquireLease();
      if (acquired === 'held-elsewhere') return { ...report, skipped: 'lease-held-elsewhere' };
      lease = acquired;
      // First, so the host pass below sees these rows as ended and destroys their VMs if the direct destroy failed.
      for (const sandbox of await this.sandboxes.pastDeadline(this.env.SANDBOX_RECONCILE_GRACE_MS)) {
        if (await this.lifecycle.failPastDeadline(sandbox)) {
          report.failedPastDeadline.push(sandbox.id);
          this.fixes.inc({ kind: 'past_deadline' });
        }
      }
      // The guarantee behind the host state events: a dead host's sandboxes end even if its event was missed.
      for (const host of this.fleet.hosts.filter((h) => h.state === 'dead')) {
        try {
          report.hostLost.push(...(await this.endSandboxesOfLostHost(host.hostId)));
        } catch (error) {
          this.logger.warn(`ending the sandboxes of lost host ${host.hostId} failed: ${describeError(error)}`);
        }
      }
      for (const host of this.fleet.hosts.filter((h) => LIVE_HOST_STATES.includes(h.state))) {
        try {
          await this.reconcileHost(host.hostId, host.grpcAddress, report);
          report.hostsChecked++;
        } catch (error) {
          this.logger.warn(`reconcile of host ${host.hostId} failed: ${String(error)}`);
        }
      }
      for (const sandbox of await this.sandboxes.overdue(EXPIRY_GRACE_SECONDS)) {
        await this.lifecycle.expire({ sandboxId: sandbox.id, expiresAt: sandbox.expiresAt.toISOString() });
        report.expired.push(sandbox.id);
        this.fixes.inc({ kind: 'expired' });
      }
    } finally {
      this.running = false;
      if (lease) await this.releaseLease(lease);
    }
    return report;
  }

  /**
   * Ends `error` (reason host_lost) every sandbox the dead host was creating or running; paused ones stay. Returns
   * the ids it ended.
   */
  async endSandboxesOfLostHost(hostId: string): Promise<string[]> {
    const ended: string[] = [];
    for (const sandbox of await this.sandboxes.liveOnHost(hostId)) {
      if (!ENDED_WITH_LOST_HOST.includes(sandbox.state as SandboxState)) continue;
      if (await this.lifecycle.markGone(sandbox.id, SandboxState.Error, HOST_LOST_REASON, ENDED_WITH_LOST_HOST)) {
        ended.push(sandbox.id);
        this.fixes.inc({ kind: 'host_lost' });
      }
    }
    if (ended.length > 0) this.logger.warn(`host ${hostId} is lost: ended ${ended.length} sandbox(es) with it (${ended.join(', ')})`);
    return ended;
  }

  /** Reconciles one host now (it came back after missing heartbeats): what it kept running and what it lost. */
  async reconcileHostNow(hostId: string): Promise<ReconcileReport> {
    const report: ReconcileReport = { hostsChecked: 0, hostLost: [], markedGone: [], destroyedOrphans: [], expired: [], failedPastDeadline: [] };
    // The event can arrive before the view has the host's new entry; its address is the same either way.
    const address = this.fleet.get(hostId)?.grpcAddress ?? (await this.hosts.get(hostId))?.address;
    if (!address) return report;
    await this.reconcileHost(hostId, address, report);
    report.hostsChecked = 1;
    return report;
  }

  /**
   * The pass's lease: a token when this replica got it, `held-elsewhere` when another replica runs a pass, and
   * undefined when Redis cannot be asked (the pass runs anyway: every fix is a conditional transition, so two
   * replicas reconciling at once only duplicate work, and reconcile is what backs up every deadline).
   */
  private async acquireLease(): Promise<string | 'held-elsewhere' | undefined> {
    const token = randomBytes(12).toString('hex');
    // Long enough for a slow pass; released at its end, so it only bounds how long a replica that died mid-pass blocks others.
    const ttlMs = Math.max(60_000, 2 * this.env.RECONCILE_INTERVAL_SECONDS * 1000);
    try {
      const set = await this.redis.commands.set(RECONCILE_LEASE_KEY, token, 'PX', ttlMs, 'NX');
      return set === 'OK' ? token : 'held-elsewhere';
    } catch (error) {
      this.logger.warn(`reconcile lease unavailable (${describeError(error)}); reconciling without it`);
      return undefined;
    }
  }

  private async releaseLease(token: string): Promise<void> {
    try {
      await this.redis.commands.eval(RELEASE_LEASE_SCRIPT, 1, RECONCILE_LEASE_KEY, token);
    } catch (error) {
      this.logger.debug(`reconcile lease release failed (${describeError(error)}); it expires on its own`);
    }
  }

  private async reconcileHost(hostId: string, address: string, report: ReconcileReport): Promise<void> {
    const agent = this.agents.for(hostId, address);
    const onHost = await this.agents.call(`list sandboxes on ${hostId}`, agent.listSandboxes({}), 15_000);
    const hostIds = new Set((onHost.sandboxes ?? []).map((s) => s.sandboxId));
    const live = await this.sandboxes.liveOnHost(hostId);
    const liveIds = new Set(live.map((s) => s.id));

    for (const sandbox of live) {
      if (hostIds.has(sandbox.id)) continue;
      // A transition in flight may not have reached the host yet; its deadline, not the host listing, decides.
      if (inFlight(sandbox, this.env.SANDBOX_RECONCILE_GRACE_MS)) continue;
      if (await this.lifecycle.markGone(sandbox.id, SandboxState.Error, `sandbox no longer exists on host ${hostId}`)) {
        report.markedGone.push(sandbox.id);
        this.fixes.inc({ kind: 'gone' });
      }
    }
    for (const sandboxId of hostIds) {
      if (liveIds.has(sandboxId)) continue;
      const record = await this.sandboxes.find(sandboxId);
      if (record && inFlight(record, this.env.SANDBOX_RECONCILE_GRACE_MS)) continue;
      this.logger.warn(`destroying VM ${sandboxId} on ${hostId}: the database does not count it as live`);
      await this.lifecycle.destroyOnHost(hostId, address, sandboxId);
      report.destroyedOrphans.push(sandboxId);
      this.fixes.inc({ kind: 'orphan' });
    }
  }
}

/** A transitional row whose deadline (plus grace) has not passed: someone may still be driving it. */
function inFlight(sandbox: SandboxRecord, graceMs: number): boolean {
  return isTransitional(sandbox.state) && (sandbox.deadlineAt === null || sandbox.deadlineAt.getTime() + graceMs > Date.now());
}
