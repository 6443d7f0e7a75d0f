import { Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { SandboxState } from '@kiln/contracts';
import { SchedulerEnv } from '@kiln/config';
import { HostRepository, SandboxRecord, SandboxRepository, isTransitional } from '@kiln/db';
import { SandboxEventSource, SandboxEventStream, SandboxLifecycleEvent } from '@kiln/messaging';
import { MetricsRegistry } from '@kiln/telemetry';
import { HostAgentClients } from '../hosts/host-agent-clients';
import { SandboxLifecycleService } from '../lifecycle/sandbox-lifecycle.service';

const PAUSE_STATES: readonly SandboxState[] = [SandboxState.Pausing, SandboxState.Paused, SandboxState.Resuming];

/** Seconds past its expiry before the sweep kills a running sandbox: its timeout job normally does it on time. */
const EXPIRY_GRACE_SECONDS = 10;

export interface ReconcileReport {
  hostsChecked: number;
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
    private readonly hosts: HostRepository,
    private readonly sandboxes: SandboxRepository,
    private readonly agents: HostAgentClients,
    private readonly lifecycle: SandboxLifecycleService,
    private readonly events: SandboxEventStream,
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
    const report: ReconcileReport = { hostsChecked: 0, markedGone: [], destroyedOrphans: [], expired: [], failedPastDeadline: [] };
    if (this.running) return report;
    this.running = true;
    try {
      // First, so the host pass below sees these rows as ended and destroys their VMs if the direct destroy failed.
      for (const sandbox of await this.sandboxes.pastDeadline(this.env.SANDBOX_RECONCILE_GRACE_MS)) {
        if (await this.lifecycle.failPastDeadline(sandbox)) {
          report.failedPastDeadline.push(sandbox.id);
          this.fixes.inc({ kind: 'past_deadline' });
        }
      }
      for (const host of await this.hosts.fresh(this.env.HOST_HEARTBEAT_TTL_SECONDS)) {
        try {
          await this.reconcileHost(host.id, host.address, report);
          report.hostsChecked++;
        } catch (error) {
          this.logger.warn(`reconcile of host ${host.id} failed: ${String(error)}`);
        }
      }
      for (const sandbox of await this.sandboxes.overdue(EXPIRY_GRACE_SECONDS)) {
        await this.lifecycle.expire({ sandboxId: sandbox.id, expiresAt: sandbox.expiresAt.toISOString() });
        report.expired.push(sandbox.id);
        this.fixes.inc({ kind: 'expired' });
      }
    } finally {
      this.running = false;
    }
    return report;
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
