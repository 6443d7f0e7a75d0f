import { Injectable, Logger, OnModuleInit } from '@nestjs/common';
import {
  DEFAULT_SANDBOX_TIMEOUT_SECONDS,
  EgressPolicy,
  effectiveEgressPolicy,
  ErrorCode,
  KilnError,
  SandboxRoute,
  SandboxState,
  SandboxView,
  TERMINAL_SANDBOX_STATES,
} from '@kiln/contracts';
import { Metadata } from '@grpc/grpc-js';
import { SchedulerEnv } from '@kiln/config';
import {
  HostRepository,
  HostStartReport,
  SandboxListFilter,
  SandboxRecord,
  SandboxRepository,
  TeamQuota,
  TemplateRepository,
  TransitionPatch,
  decodeKeysetCursor,
  encodeKeysetCursor,
  isTransitional,
} from '@kiln/db';
import {
  CreateSandboxCommand,
  KillReply,
  ListSandboxesQuery,
  RefreshCommand,
  ResumeCommand,
  SandboxEventStream,
  SandboxLogsReply,
  SandboxPage,
  SandboxRef,
  SetTimeoutCommand,
  UpdateNetworkCommand,
} from '@kiln/messaging';
import { MetricsRegistry } from '@kiln/telemetry';
import { HostAgentClients } from '../hosts/host-agent-clients';
import { PlacementCandidate, PlacementService } from '../placement/placement.service';
import { SandboxTimeoutJob, SandboxTimeouts } from '../timeouts/sandbox-timeouts';
import { SandboxInfo } from '@kiln/proto/hostagent';
import { newSandboxId } from './sandbox-ids';
import { SandboxTokens } from './sandbox-tokens';
import { networkOf, toSandboxView } from './sandbox-view.mapper';

const LIVE_OR_PAUSED: SandboxState[] = [
  SandboxState.Pending,
  SandboxState.Starting,
  SandboxState.Running,
  SandboxState.Pausing,
  SandboxState.Paused,
  SandboxState.Resuming,
];
/**
 * What a list shows as running and as paused. A create still in flight (pending, starting) is not listed: like E2B,
 * a sandbox appears once its create succeeded, with the start time it keeps from then on (the list's sort key).
 */
const LISTED_RUNNING: SandboxState[] = [SandboxState.Running, SandboxState.Resuming];
const LISTED_PAUSED: SandboxState[] = [SandboxState.Pausing, SandboxState.Paused];
/** The scheduler's own ceiling per list request (the gateway's v1 list reads in pages of this size). */
const MAX_LIST_PAGE = 1000;
const RETRY_AFTER_SECONDS = 5;
/** A host attempt with less than this left of the create's deadline is not started: it could not finish. */
const MIN_HOST_ATTEMPT_MS = 100;

/**
 * The sandbox state machine: every change goes through a conditional transition in
 * Postgres, so concurrent callers (two kills, a kill racing a create, an expiry racing
 * a refresh) cannot both win.
 *
 * Crash safety: a row enters a transitional state (pending, starting) with a deadline stored on it, and reaches
 * running with its expiry in the same transition. Whatever this process does not finish (a kill -9 mid-create, a
 * lost timeout job) is found by reconcile's sweeps from the row alone: `failPastDeadline` and `expire`.
 */
@Injectable()
export class SandboxLifecycleService implements OnModuleInit {
  private readonly logger = new Logger(SandboxLifecycleService.name);
  private readonly createLatency;
  private readonly transitions;

  constructor(
    private readonly sandboxes: SandboxRepository,
    private readonly templates: TemplateRepository,
    private readonly hosts: HostRepository,
    private readonly placement: PlacementService,
    private readonly agents: HostAgentClients,
    private readonly timeouts: SandboxTimeouts,
    private readonly events: SandboxEventStream,
    private readonly tokens: SandboxTokens,
    private readonly env: SchedulerEnv,
    metrics: MetricsRegistry,
  ) {
    this.createLatency = metrics.histogram('kiln_sandbox_create_seconds', 'Create request to running', ['outcome'], [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30]);
    this.transitions = metrics.counter('kiln_sandbox_transitions_total', 'Sandbox state transitions', ['to']);
  }

  onModuleInit(): void {
    this.timeouts.startWorker((job) => this.expire(job));
  }

  async create(command: CreateSandboxCommand): Promise<SandboxView> {
    // Until pause exists, a sandbox asked to pause at its timeout would be killed instead: refused, never downgraded.
    if (command.autoPause) throw new KilnError(ErrorCode.InvalidArgument, 'autoPause: pausing on timeout is not supported by this deployment');
    const started = performance.now();
    const template = await this.templates.resolve(command.templateRef, command.teamId);
    if (!template) throw new KilnError(ErrorCode.NotFound, `template '${command.templateRef}' not found`);
    if (!template.buildId || !template.hostBuildId) {
      throw new KilnError(ErrorCode.FailedPrecondition, `template '${command.templateRef}' has no ready build`);
    }

    const timeoutSeconds = command.timeoutSeconds ?? DEFAULT_SANDBOX_TIMEOUT_SECONDS;
    const { sandbox, created } = await this.sandboxes.createPending({
      id: newSandboxId(),
      teamId: command.teamId,
      templateId: template.templateId,
      buildId: template.buildId,
      alias: template.alias,
      vcpus: template.vcpus,
      memoryMib: template.memoryMib,
      diskMib: template.diskMib,
      timeoutSeconds,
      autoPause: command.autoPause,
      metadata: command.metadata ?? {},
      // No env vars: they may hold secrets, so they only travel with the host create call below and are never stored.
      network: command.network,
      requestKey: command.requestKey,
      deadlineAt: new Date(Date.now() + this.env.SANDBOX_HOST_CREATE_DEADLINE_MS),
    }, this.quotaDefaults());
    if (!created) return this.retriedCreate(sandbox);

    try {
      const view = await this.start(sandbox, template.hostBuildId, command.envVars ?? {});
      this.createLatency.observe({ outcome: 'ok' }, (performance.now() - started) / 1000);
      return view;
    } catch (error) {
      this.createLatency.observe({ outcome: 'error' }, (performance.now() - started) / 1000);
      throw error;
    }
  }

  /** The deployment's quota, checked by createPending atomically with the insert (TeamQuotaExceededError: 429). */
  private quotaDefaults(): TeamQuota {
    return {
      maxConcurrentSandboxes: this.env.TEAM_MAX_CONCURRENT_SANDBOXES,
      maxVcpus: this.env.TEAM_MAX_VCPUS,
      maxMemoryMib: this.env.TEAM_MAX_MEMORY_MIB,
    };
  }

  /** A retried create with the same request key answers with the sandbox the first attempt made. */
  private async retriedCreate(sandbox: SandboxRecord): Promise<SandboxView> {
    if (isPastDeadline(sandbox)) await this.failPastDeadline(sandbox);
    const current = (await this.sandboxes.find(sandbox.id)) ?? sandbox;
    return this.retriedCreateOf(current);
  }

  private retriedCreateOf(sandbox: SandboxRecord): SandboxView {
    if (TERMINAL_SANDBOX_STATES.includes(sandbox.state as SandboxState)) {
      throw new KilnError(ErrorCode.Conflict, `sandbox ${sandbox.id} for this request already ended (${sandbox.stateReason ?? sandbox.state})`);
    }
    return this.view(sandbox);
  }

  private view(record: SandboxRecord): SandboxView {
    return toSandboxView(record, this.tokens);
  }

  private async start(sandbox: SandboxRecord, hostBuildId: string, envVars: Record<string, string>): Promise<SandboxView> {
    const candidates = await this.placement.candidates({ templateId: sandbox.templateId, vcpus: sandbox.vcpus, memoryMib: sandbox.memoryMib });
    if (candidates.length === 0) {
      await this.moveTo(sandbox, [SandboxState.Pending], SandboxState.Error, { reason: 'no host with free capacity', endedAt: new Date() });
      throw new KilnError(ErrorCode.ResourceExhausted, 'no host has room for this sandbox right now', RETRY_AFTER_SECONDS);
    }

    let lastError: KilnError | undefined;
    for (const [attempt, host] of candidates.entries()) {
      if (remainingMs(sandbox) < MIN_HOST_ATTEMPT_MS) {
        lastError = new KilnError(ErrorCode.Unavailable, this.createDeadlineReason(), RETRY_AFTER_SECONDS);
        await this.moveTo(sandbox, [SandboxState.Pending, SandboxState.Starting], SandboxState.Error, { reason: lastError.message, endedAt: new Date() });
        throw lastError;
      }
      const starting =
        attempt === 0
          ? await this.moveTo(sandbox, [SandboxState.Pending], SandboxState.Starting, { hostId: host.hostId })
          : await this.sandboxes.reassignHost(sandbox.id, host.hostId);
      if (!starting) throw await this.endedWhileStarting(sandbox.id);
      let started: HostStartReport;
      try {
        started = await this.createOnHost(starting, host, hostBuildId, envVars);
      } catch (error) {
        lastError = error instanceof KilnError ? error : new KilnError(ErrorCode.Internal, String(error));
        // A full host is a reason to try the next one; anything else is the sandbox's failure.
        if (lastError.code === ErrorCode.ResourceExhausted) continue;
        await this.moveTo(starting, [SandboxState.Starting], SandboxState.Error, { reason: lastError.message, endedAt: new Date() });
        // A timed-out or failed create may still have left a VM. Not awaited: a host that hung on the create may hang
        // on this too, and the caller's answer must not wait for it (reconcile's orphan pass retries it).
        void this.destroyOnHost(host.hostId, host.grpcAddress, sandbox.id);
        throw lastError;
      }
      const now = new Date();
      // Expiry is part of the move to running: a crash right after it leaves a row the expiry sweep still covers.
      const running = await this.moveTo(starting, [SandboxState.Starting], SandboxState.Running, {
        startedAt: now,
        expiresAt: new Date(now.getTime() + sandbox.timeoutSeconds * 1000),
        started,
        // Counted on reaching running, not on request: E2B counts sandboxes its create actually started.
        spawnedFromTemplate: sandbox.templateId,
      });
      if (!running) {
        // Killed (or failed by reconcile) while the VM was being made: nothing else knows of this VM, so this path removes it.
        await this.destroyOnHost(host.hostId, host.grpcAddress, sandbox.id);
        throw await this.endedWhileStarting(sandbox.id);
      }
      // Only a shortcut to the exact moment; when Redis is down the sweep expires the sandbox instead.
      await this.timeouts.schedule(running.id, running.expiresAt);
      return this.view(running);
    }
    await this.moveTo(sandbox, [SandboxState.Pending, SandboxState.Starting], SandboxState.Error, { reason: 'every candidate host was full', endedAt: new Date() });
    throw new KilnError(ErrorCode.ResourceExhausted, lastError?.message ?? 'no host has room for this sandbox right now', RETRY_AFTER_SECONDS);
  }

  /**
   * The one create request a host gets: the build, resources, timeout and egress rules resolved here. The host's
   * SandboxInfo reply is what gets stored; a reply that contradicts the request is the host's failure.
   */
  private async createOnHost(
    sandbox: SandboxRecord,
    host: PlacementCandidate,
    hostBuildId: string,
    envVars: Record<string, string>,
  ): Promise<HostStartReport> {
    const what = `create ${sandbox.id} on ${host.hostId}`;
    const agent = this.agents.for(host.hostId, host.grpcAddress);
    // The host gets the create's own deadline (gRPC deadline, which the agent reads), so it never works on past it.
    const deadline = createDeadlineOf(sandbox);
    const createWithDeadline = agent.createSandbox as (
      request: Parameters<typeof agent.createSandbox>[0],
      metadata: Metadata,
      options: { deadline: Date },
    ) => ReturnType<typeof agent.createSandbox>;
    const info = await this.agents
      .call(
      what,
      createWithDeadline.call(agent, {
        sandboxId: sandbox.id,
        templateId: sandbox.templateId,
        buildId: hostBuildId,
        vcpus: sandbox.vcpus,
        memoryMib: sandbox.memoryMib,
        envVars,
        metadata: (sandbox.metadata ?? {}) as Record<string, string>,
        envdAccessToken: this.tokens.envdAccessToken(sandbox.id),
        timeoutSeconds: sandbox.timeoutSeconds,
        teamId: sandbox.teamId,
        egress: effectiveEgressPolicy(networkOf(sandbox)),
      }, new Metadata(), { deadline }),
      Math.max(MIN_HOST_ATTEMPT_MS, deadline.getTime() - Date.now()),
    )
      .catch((error: unknown) => {
        // Whichever fired first (the gRPC deadline or the local timer), the create ran out of its budget.
        if (error instanceof KilnError && Date.now() >= deadline.getTime() - MIN_HOST_ATTEMPT_MS) {
          throw new KilnError(ErrorCode.Timeout, `${this.createDeadlineReason()}: host ${host.hostId} did not answer in time`);
        }
        throw error;
      });
    if (info.buildId !== hostBuildId) {
      throw new KilnError(ErrorCode.Internal, `${what}: host started build ${info.buildId || '(none)'} instead of ${hostBuildId}`);
    }
    return { vcpus: info.vcpus, memoryMib: info.memoryMib, egress: egressOf(info) };
  }

  /** `PUT /sandboxes/{id}/network`: the host applies the new rules to the running sandbox, then they are stored. */
  async updateNetwork(command: UpdateNetworkCommand): Promise<SandboxView> {
    const sandbox = await this.requireLive(command);
    if (sandbox.state !== SandboxState.Running || !sandbox.hostId) {
      throw new KilnError(ErrorCode.Conflict, `sandbox ${sandbox.id} is ${sandbox.state}: its network can only be changed while it runs`);
    }
    const host = await this.hosts.get(sandbox.hostId);
    if (!host) throw new KilnError(ErrorCode.Unavailable, `host of sandbox ${sandbox.id} is not registered`, RETRY_AFTER_SECONDS);
    const egress = effectiveEgressPolicy({ egress: command.egress, allowInternetAccess: command.allowInternetAccess });
    const info = await this.agents.call(
      `update network of ${sandbox.id} on ${host.id}`,
      this.agents.for(host.id, host.address).updateSandboxNetwork({ sandboxId: sandbox.id, egress }),
    );
    const updated = await this.sandboxes.setEgress(sandbox.id, egressOf(info), command.allowInternetAccess);
    if (!updated) throw KilnError.notFound(`sandbox ${sandbox.id}`);
    return this.view(updated);
  }

  private async endedWhileStarting(id: string): Promise<KilnError> {
    const now = await this.sandboxes.find(id);
    return new KilnError(ErrorCode.NotFound, `sandbox ${id} was ${now?.state ?? 'removed'} while starting`);
  }

  async get(ref: SandboxRef): Promise<SandboxView> {
    return this.view(await this.requireLive(ref));
  }

  private createDeadlineReason(): string {
    return `create did not finish within ${Math.round(this.env.SANDBOX_HOST_CREATE_DEADLINE_MS / 1000)} s`;
  }

  /**
   * A row still in a transitional state past its deadline: whoever drove the transition crashed or hung. The row
   * goes to error with the reason, and the VM, if a host has one, is destroyed (DestroySandbox is idempotent; a
   * failed destroy is retried by reconcile's orphan pass, since the row no longer counts as live).
   */
  async failPastDeadline(sandbox: SandboxRecord): Promise<boolean> {
    if (!isTransitional(sandbox.state)) return false;
    const what = sandbox.state === SandboxState.Pending || sandbox.state === SandboxState.Starting ? this.createDeadlineReason() : `${sandbox.state} did not finish by its deadline`;
    const failed = await this.moveTo(sandbox, [sandbox.state as SandboxState], SandboxState.Error, {
      reason: `${what} (scheduler restarted?)`,
      endedAt: new Date(),
    });
    if (!failed) return false;
    this.logger.warn(`sandbox ${sandbox.id} was ${sandbox.state} past its deadline: ${failed.stateReason}`);
    await this.timeouts.cancel(sandbox.id);
    if (failed.hostId) {
      const host = await this.hosts.get(failed.hostId);
      if (host) await this.destroyOnHost(host.id, host.address, sandbox.id);
    }
    return true;
  }

  /**
   * A page of the team's sandboxes, filtered and ordered in the query (E2B's GET /v2/sandboxes): by start time, newest
   * first unless `order` is asc, the sandbox id breaking ties; `nextToken` continues after the previous page's last row.
   */
  async list(query: ListSandboxesQuery): Promise<SandboxPage> {
    const order = query.order ?? 'desc';
    const cursor = query.nextToken ? decodeKeysetCursor(query.nextToken) : undefined;
    if (query.nextToken && !cursor) throw new KilnError(ErrorCode.InvalidArgument, 'nextToken: not a token this API issued');
    if (cursor && cursor.order !== order) {
      throw new KilnError(ErrorCode.InvalidArgument, `nextToken: it continues a list in ${cursor.order} order; send order=${cursor.order} with it`);
    }
    const startedAfter = query.startedAfter !== undefined ? new Date(query.startedAfter) : undefined;
    if (startedAfter && Number.isNaN(startedAfter.getTime())) throw new KilnError(ErrorCode.InvalidArgument, 'startedAfter: not a timestamp');

    const wanted = query.states?.length ? query.states : ['running', 'paused'];
    const states = [...(wanted.includes('running') ? LISTED_RUNNING : []), ...(wanted.includes('paused') ? LISTED_PAUSED : [])];
    let templateId: string | undefined;
    if (query.templateRef !== undefined) {
      // A template the team cannot see names no sandbox of the team (E2B answers an empty list, not an error).
      const resolved = await this.templates.resolveVisibleId(query.templateRef, query.teamId);
      if (!resolved) return { sandboxes: [], ...(wanted.includes('running') ? { totalRunning: 0 } : {}) };
      templateId = resolved;
    }
    const filter: SandboxListFilter = {
      teamId: query.teamId,
      states,
      metadata: query.metadata,
      templateId,
      startedAtOrAfter: startedAfter,
      // A row past its transition deadline is failed, only not yet swept: it is not listed.
      hideTransitionalDueBy: new Date(),
    };
    const limit = Math.min(Math.max(query.limit || 100, 1), MAX_LIST_PAGE);
    const [rows, totalRunning] = await Promise.all([
      this.sandboxes.list(filter, { order, limit: limit + 1, after: cursor ? { startedAt: cursor.at, id: cursor.id } : undefined }),
      wanted.includes('running') ? this.sandboxes.countListed({ ...filter, states: LISTED_RUNNING }) : Promise.resolve(undefined),
    ]);
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    return {
      sandboxes: page.map((row) => this.view(row)),
      // startedAt is set on every listed row (the filter requires it).
      nextToken: rows.length > limit ? encodeKeysetCursor(last.startedAt as Date, last.id, order) : undefined,
      ...(totalRunning !== undefined ? { totalRunning } : {}),
    };
  }

  async kill(ref: SandboxRef, reason = 'killed by request'): Promise<KillReply> {
    const sandbox = await this.sandboxes.findForTeam(ref.sandboxId, ref.teamId);
    if (!sandbox) throw KilnError.notFound(`sandbox ${ref.sandboxId}`);
    return this.killRecord(sandbox, reason);
  }

  private async killRecord(sandbox: SandboxRecord, reason: string): Promise<KillReply> {
    const killed = await this.moveTo(sandbox, [...LIVE_OR_PAUSED, SandboxState.Error], SandboxState.Killed, { reason, endedAt: new Date() });
    if (!killed) return { killed: false };
    await this.timeouts.cancel(sandbox.id);
    if (killed.hostId) {
      const host = await this.hosts.get(killed.hostId);
      if (host) await this.destroyOnHost(host.id, host.address, sandbox.id);
    }
    return { killed: true };
  }

  async setTimeout(command: SetTimeoutCommand): Promise<SandboxView> {
    await this.requireLive(command);
    return this.extendTo(command.sandboxId, new Date(Date.now() + command.timeoutSeconds * 1000), command.timeoutSeconds);
  }

  async refresh(command: RefreshCommand): Promise<SandboxView> {
    const sandbox = await this.requireLive(command);
    const wanted = new Date(Date.now() + (command.durationSeconds ?? sandbox.timeoutSeconds) * 1000);
    const expiresAt = wanted > sandbox.expiresAt ? wanted : sandbox.expiresAt;
    return this.extendTo(sandbox.id, expiresAt);
  }

  private async extendTo(id: string, expiresAt: Date, timeoutSeconds?: number): Promise<SandboxView> {
    const updated = await this.sandboxes.setExpiry(id, expiresAt, timeoutSeconds);
    if (!updated) throw KilnError.notFound(`sandbox ${id}`);
    await this.timeouts.schedule(id, expiresAt);
    return this.view(updated);
  }

  /**
   * Pause does not exist yet. Not a conflict (409): the SDK reads that as "already paused" and reports success. A
   * missing sandbox is still not found.
   */
  async pause(ref: SandboxRef): Promise<SandboxView> {
    const sandbox = await this.requireLive(ref);
    throw new KilnError(ErrorCode.NotImplemented, `sandbox ${sandbox.id} cannot be paused: pause is not supported by this deployment yet`);
  }

  /** Resume does not exist yet either (connect to a paused sandbox comes here too). */
  async resume(command: ResumeCommand): Promise<SandboxView> {
    const sandbox = await this.requireLive(command);
    throw new KilnError(ErrorCode.NotImplemented, `sandbox ${sandbox.id} cannot be resumed: pause/resume is not supported by this deployment yet`);
  }

  /** Connect: a running sandbox is returned (and its timeout applied); a paused one would be resumed. */
  async connect(command: ResumeCommand): Promise<SandboxView> {
    const sandbox = await this.requireLive(command);
    if (sandbox.state === SandboxState.Paused) return this.resume(command);
    if (command.timeoutSeconds !== undefined) {
      const wanted = new Date(Date.now() + command.timeoutSeconds * 1000);
      if (wanted > sandbox.expiresAt) return this.extendTo(sandbox.id, wanted);
    }
    return this.view(sandbox);
  }

  async route(sandboxId: string): Promise<SandboxRoute> {
    const sandbox = await this.sandboxes.find(sandboxId);
    if (!sandbox || TERMINAL_SANDBOX_STATES.includes(sandbox.state as SandboxState) || !sandbox.hostId) {
      throw KilnError.notFound(`sandbox ${sandboxId}`);
    }
    const host = await this.hosts.get(sandbox.hostId);
    if (!host) throw new KilnError(ErrorCode.Unavailable, `host of sandbox ${sandboxId} is not registered`);
    return {
      sandboxId,
      teamId: sandbox.teamId,
      state: sandbox.state as SandboxState,
      proxyUrl: host.proxyUrl,
      envdAccessToken: this.tokens.envdAccessToken(sandbox.id),
      ...(sandbox.allowPublicTraffic ? {} : { trafficAccessToken: this.tokens.trafficAccessToken(sandbox.id) }),
      ...(sandbox.maskRequestHost ? { maskRequestHost: sandbox.maskRequestHost } : {}),
    };
  }

  async logs(ref: SandboxRef): Promise<SandboxLogsReply> {
    const sandbox = await this.sandboxes.findForTeam(ref.sandboxId, ref.teamId);
    if (!sandbox) throw KilnError.notFound(`sandbox ${ref.sandboxId}`);
    const events = await this.sandboxes.events(sandbox.id);
    return {
      logs: events.map((e) => ({
        timestamp: e.createdAt.toISOString(),
        line: `${e.fromState ?? 'new'} -> ${e.toState}${e.reason ? `: ${e.reason}` : ''}`,
      })),
    };
  }

  /** Timeout job: kills unless extended since. (autoPause is refused at create until pause exists; a row stored with it earlier is killed too.) */
  async expire(job: SandboxTimeoutJob): Promise<void> {
    const sandbox = await this.sandboxes.find(job.sandboxId);
    if (!sandbox || !LIVE_OR_PAUSED.includes(sandbox.state as SandboxState)) return;
    if (sandbox.expiresAt.getTime() > Date.now() + 250) return; // refreshed after this job was queued
    this.logger.log(`sandbox ${sandbox.id} reached its timeout`);
    await this.killRecord(sandbox, 'timeout');
  }

  /** Called by reconcile and host events: the VM is gone, so the record follows. */
  async markGone(sandboxId: string, to: SandboxState.Killed | SandboxState.Error, reason: string): Promise<boolean> {
    const sandbox = await this.sandboxes.find(sandboxId);
    if (!sandbox) return false;
    const moved = await this.moveTo(sandbox, LIVE_OR_PAUSED, to, { reason, endedAt: new Date() });
    if (moved) await this.timeouts.cancel(sandboxId);
    return moved !== null;
  }

  private async requireLive(ref: SandboxRef): Promise<SandboxRecord> {
    const sandbox = await this.sandboxes.findForTeam(ref.sandboxId, ref.teamId);
    if (!sandbox || !LIVE_OR_PAUSED.includes(sandbox.state as SandboxState)) throw KilnError.notFound(`sandbox ${ref.sandboxId}`);
    if (isPastDeadline(sandbox)) {
      // Reading it settles it: no caller sees a transition that can no longer finish as if it still might.
      await this.failPastDeadline(sandbox);
      throw KilnError.notFound(`sandbox ${ref.sandboxId}`);
    }
    return sandbox;
  }

  private async moveTo(sandbox: SandboxRecord, from: SandboxState[], to: SandboxState, patch: TransitionPatch = {}): Promise<SandboxRecord | null> {
    const result = await this.sandboxes.transition(sandbox.id, from, to, patch);
    if (!result) return null;
    const moved = result.sandbox;
    this.transitions.inc({ to });
    // The event is a notification, not the record: Postgres already holds the transition, so NATS being down only delays nothing.
    this.events
      .publish({
        kind: 'transition',
        sandboxId: sandbox.id,
        teamId: sandbox.teamId,
        hostId: moved.hostId ?? undefined,
        from: result.from,
        to,
        reason: patch.reason,
        at: new Date().toISOString(),
      }, 'scheduler')
      .catch((error) => this.logger.warn(`event publish failed for ${sandbox.id}: ${String(error)}`));
    return moved;
  }

  async destroyOnHost(hostId: string, address: string, sandboxId: string): Promise<void> {
    try {
      await this.agents.call(`destroy ${sandboxId} on ${hostId}`, this.agents.for(hostId, address).destroySandbox({ sandboxId }), 30_000);
    } catch (error) {
      // Reconcile destroys VMs the database no longer counts as live, so this is retried later.
      this.logger.warn(`destroy of ${sandboxId} on ${hostId} failed; reconcile will retry: ${String(error)}`);
    }
  }
}

/** The create's deadline as stored on its row (rows from before deadlines existed get none: now). */
function createDeadlineOf(sandbox: SandboxRecord): Date {
  return sandbox.deadlineAt ?? new Date();
}

function remainingMs(sandbox: SandboxRecord): number {
  return createDeadlineOf(sandbox).getTime() - Date.now();
}

function isPastDeadline(sandbox: SandboxRecord, now = Date.now()): boolean {
  return isTransitional(sandbox.state) && sandbox.deadlineAt !== null && sandbox.deadlineAt.getTime() <= now;
}

function egressOf(info: SandboxInfo): EgressPolicy {
  return { allowOut: info.egress?.allowOut ?? [], denyOut: info.egress?.denyOut ?? [] };
}
