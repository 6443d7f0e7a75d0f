import { Injectable, Logger, OnModuleInit } from '@nestjs/common';
import {
  DEFAULT_SANDBOX_TIMEOUT_SECONDS,
  EgressPolicy,
  effectiveEgressPolicy,
  ErrorCode,
  errorCodeForGrpcStatus,
  KilnError,
  SandboxRoute,
  SandboxState,
  SandboxView,
  TERMINAL_SANDBOX_STATES,
} from '@kiln/contracts';
import { Metadata } from '@grpc/grpc-js';
import { SchedulerEnv, pauseDeadlineMs, resumeDeadlineMs } from '@kiln/config';
import { status as GrpcStatus } from '@grpc/grpc-js';
import {
  HostRepository,
  HostSnapshotLocation,
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
  ForkCommand,
  ForkReply,
  ForkResultView,
  KillReply,
  PauseCommand,
  ResumeReply,
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
import { HostReservation, PlacementCandidate, PlacementService } from '../placement/placement.service';
import { SandboxTimeoutJob, SandboxTimeouts } from '../timeouts/sandbox-timeouts';
import { ForkSandboxResponse, SandboxInfo, SandboxState as HostSandboxState } from '@kiln/proto/hostagent';
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
const PAUSED_OR_PAUSING: SandboxState[] = [SandboxState.Pausing, SandboxState.Paused];
/** How often a caller waiting for another caller's pause or resume re-reads the row. */
const SETTLE_POLL_MS = 100;
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
    // E2B: a disk-only pause cannot be resumed by traffic, so the two together are refused.
    if (command.autoResume && command.autoPauseMemory === false) {
      throw new KilnError(ErrorCode.InvalidArgument, 'autoResume cannot be enabled with autoPauseMemory: false (a filesystem-only pause must be resumed explicitly)');
    }
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
      autoPauseMemory: command.autoPauseMemory ?? true,
      autoResume: command.autoResume ?? false,
      metadata: command.metadata ?? {},
      // No env vars: they may hold secrets, so they only travel with the host create call below and are never stored.
      network: command.network,
      requestKey: command.requestKey,
      deadlineAt: new Date(Date.now() + this.env.SANDBOX_HOST_CREATE_DEADLINE_MS),
    }, this.quotaDefaults());
    if (!created) return this.retriedCreate(sandbox);

    try {
      const view = await this.start(sandbox, template.hostBuildId, command.envVars ?? {}, template.snapshot);
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
      maxDiskMib: this.env.TEAM_MAX_DISK_MIB,
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

  private async start(
    sandbox: SandboxRecord,
    hostBuildId: string,
    envVars: Record<string, string>,
    snapshot?: HostSnapshotLocation,
  ): Promise<SandboxView> {
    const candidates = this.placement.candidates(
      { templateId: sandbox.templateId, vcpus: sandbox.vcpus, memoryMib: sandbox.memoryMib, diskMib: sandbox.diskMib },
      // A named snapshot's artifacts live on one host: its sandboxes start there or nowhere.
      snapshot ? { onlyHostId: snapshot.hostId } : {},
    );
    if (candidates.length === 0) {
      this.placement.recordResult('no_host');
      const reason = snapshot ? `the snapshot's host ${snapshot.hostId} is unavailable or has no free capacity` : 'no host with free capacity';
      await this.moveTo(sandbox, [SandboxState.Pending], SandboxState.Error, { reason, endedAt: new Date() });
      throw new KilnError(ErrorCode.ResourceExhausted, snapshot ? `${reason} right now` : 'no host has room for this sandbox right now', RETRY_AFTER_SECONDS);
    }

    // Reserved before anything awaits, so this replica's next decision already counts this sandbox on that host.
    let nextReservation: HostReservation | undefined = this.placement.reserve(candidates[0].hostId, sandbox);
    let lastError: KilnError | undefined;
    for (const [attempt, host] of candidates.entries()) {
      // Held while the host works on it (and until its heartbeats show it); released on every way out but success.
      const reservation = nextReservation ?? this.placement.reserve(host.hostId, sandbox);
      nextReservation = undefined;
      let placed = false;
      try {
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
          started = await this.createOnHost(starting, host, hostBuildId, envVars, snapshot);
          reservation.settle();
          placed = true;
        } catch (error) {
          lastError = error instanceof KilnError ? error : new KilnError(ErrorCode.Internal, String(error));
          // A full host is a reason to try the next one; anything else is the sandbox's failure.
          if (lastError.code === ErrorCode.ResourceExhausted) continue;
          // So is a host that cannot be reached while another candidate is left: one that died and is not declared
          // dead yet (up to HOST_DEAD_AFTER_SECONDS), or a restarted agent whose channel is still reconnecting. In
          // case it did make the VM, it is destroyed there (reconcile's orphan pass retries it: the row now names
          // another host).
          if (lastError.code === ErrorCode.Unavailable && attempt < candidates.length - 1) {
            this.logger.warn(`create of ${sandbox.id} on ${host.hostId} failed (${lastError.message}); trying the next host`);
            void this.destroyOnHost(host.hostId, host.grpcAddress, sandbox.id);
            continue;
          }
          this.placement.recordResult('failed');
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
        this.placement.recordResult('placed');
        // Only a shortcut to the exact moment; when Redis is down the sweep expires the sandbox instead.
        await this.timeouts.schedule(running.id, running.expiresAt);
        return this.view(running);
      } finally {
        if (!placed) reservation.release();
      }
    }
    this.placement.recordResult('all_full');
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
    snapshot?: HostSnapshotLocation,
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
        // From a snapshot: the template build its memory is based on, as the host named them, and the snapshot itself.
        templateId: snapshot ? snapshot.hostTemplateId : sandbox.templateId,
        buildId: hostBuildId,
        snapshotId: snapshot?.snapshotId ?? '',
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
    if (sandbox.state === SandboxState.Pausing || sandbox.state === SandboxState.Resuming) {
      // Never half-way and never lost: the host says whether the VM runs or is paused, and the row follows it.
      if (await this.settleWithHost(sandbox, `${sandbox.state} did not finish by its deadline (scheduler restarted?)`)) return true;
      // Its host is registered but cannot be asked (an agent restarting, a network blip): whether the pause or resume
      // committed there is unknown, and failing the row would destroy a sandbox that may be whole. It waits for the
      // host for another deadline; a host gone for good is for host liveness to declare, not a guess made here.
      const host = sandbox.hostId ? await this.hosts.get(sandbox.hostId) : null;
      if (host) {
        const wait = sandbox.state === SandboxState.Pausing ? pauseDeadlineMs(this.env) : resumeDeadlineMs(this.env);
        if (await this.sandboxes.extendDeadline(sandbox.id, sandbox.state as SandboxState, new Date(Date.now() + wait))) {
          this.logger.warn(`sandbox ${sandbox.id} is still ${sandbox.state}: its host ${host.id} cannot be asked; waiting ${wait} ms more`);
          return false;
        }
      }
    }
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
      // A paused sandbox's destroy removes its pause artifacts on the host too.
      const host = await this.hosts.get(killed.hostId);
      if (host) await this.destroyOnHost(host.id, host.address, sandbox.id);
    }
    await this.sandboxes.clearPause(sandbox.id);
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
   * `POST /sandboxes/{id}/pause`: running → pausing (with its deadline) → host PauseSandbox → paused, with what the
   * host wrote stored. Already paused (or pausing) is a conflict, which the SDK reads as "already paused".
   */
  async pause(command: PauseCommand): Promise<SandboxView> {
    const sandbox = await this.requireLive(command);
    return this.view(await this.pauseRecord(sandbox, command.keepMemory ?? true, 'paused by request'));
  }

  private async pauseRecord(sandbox: SandboxRecord, keepMemory: boolean, reason: string): Promise<SandboxRecord> {
    if (PAUSED_OR_PAUSING.includes(sandbox.state as SandboxState)) throw alreadyPaused(sandbox.id);
    if (sandbox.state !== SandboxState.Running) {
      throw new KilnError(ErrorCode.Conflict, `sandbox ${sandbox.id} is ${sandbox.state}: only a running sandbox can be paused`);
    }
    const host = await this.requireHost(sandbox);
    const deadline = new Date(Date.now() + pauseDeadlineMs(this.env));
    const pausing = await this.moveTo(sandbox, [SandboxState.Running], SandboxState.Pausing, { deadlineAt: deadline, reason });
    if (!pausing) {
      const now = await this.sandboxes.find(sandbox.id);
      if (now && PAUSED_OR_PAUSING.includes(now.state as SandboxState)) throw alreadyPaused(sandbox.id);
      throw new KilnError(ErrorCode.Conflict, `sandbox ${sandbox.id} is ${now?.state ?? 'gone'}: only a running sandbox can be paused`);
    }
    // A paused sandbox does not expire; the resume schedules a new timeout.
    await this.timeouts.cancel(sandbox.id);
    let reply;
    try {
      reply = await this.agents.call(
        `pause ${sandbox.id} on ${host.id}`,
        this.agents.for(host.id, host.address).pauseSandbox({ sandboxId: sandbox.id, keepMemory }),
        Math.max(MIN_HOST_ATTEMPT_MS, deadline.getTime() - Date.now()),
      );
    } catch (error) {
      const failure = asKilnError(error);
      const settled = await this.settleWithHost(pausing, `pause failed: ${failure.message}`, keepMemory);
      const now = await this.sandboxes.find(sandbox.id);
      // The host has it paused after all (its answer was lost): the pause happened.
      if (settled && now?.state === SandboxState.Paused) return now;
      throw failure;
    }
    const artifacts = reply.artifacts;
    await this.sandboxes.recordPause(sandbox.id, host.id, {
      keepMemory: artifacts?.keepMemory ?? keepMemory,
      memoryBytes: artifacts?.memoryBytes ?? 0,
      stateBytes: artifacts?.stateBytes ?? 0,
      diskBytes: artifacts?.diskBytes ?? 0,
      manifestSha256: artifacts?.manifestSha256 ?? '',
      durationMs: reply.durationMs,
      reported: true,
    });
    const paused = await this.moveTo(pausing, [SandboxState.Pausing], SandboxState.Paused, { reason });
    if (!paused) throw await this.endedWhile(sandbox.id, 'pausing');
    return paused;
  }

  /** `POST /sandboxes/{id}/resume`: a paused sandbox is resumed (201); a running one is a conflict (409). */
  async resume(command: ResumeCommand): Promise<ResumeReply> {
    return this.resumeOrConnect(command, 'resume');
  }

  /** `POST /sandboxes/{id}/connect`: a running sandbox is returned (its timeout only extended); a paused one is resumed. */
  async connect(command: ResumeCommand): Promise<ResumeReply> {
    return this.resumeOrConnect(command, 'connect');
  }

  private async resumeOrConnect(command: ResumeCommand, mode: 'resume' | 'connect'): Promise<ResumeReply> {
    const sandbox = await this.requireLive(command);
    if (sandbox.state === SandboxState.Running || sandbox.state === SandboxState.Pending || sandbox.state === SandboxState.Starting) {
      if (mode === 'resume') throw new KilnError(ErrorCode.Conflict, `sandbox ${sandbox.id} is already running`);
      if (command.timeoutSeconds !== undefined) {
        const wanted = new Date(Date.now() + command.timeoutSeconds * 1000);
        if (wanted > sandbox.expiresAt) return { sandbox: await this.extendTo(sandbox.id, wanted), resumed: false };
      }
      return { sandbox: this.view(sandbox), resumed: false };
    }
    const running = await this.resumeRecord(sandbox, command.timeoutSeconds, command.autoPause);
    return { sandbox: this.view(running), resumed: true };
  }

  /**
   * Traffic for a paused sandbox (the traffic listener, no team): resumes it when its lifecycle allows (autoResume,
   * and a pause that kept memory), and answers its route once it runs. Concurrent calls share one resume (the row's
   * conditional move to resuming lets one caller win; the others wait for it).
   */
  async autoResume(sandboxId: string): Promise<SandboxRoute> {
    const found = await this.sandboxes.find(sandboxId);
    if (!found || !LIVE_OR_PAUSED.includes(found.state as SandboxState)) throw KilnError.notFound(`sandbox ${sandboxId}`);
    // A pause in flight is waited for: whether traffic may resume it depends on what that pause kept.
    const sandbox = await this.settled(found);
    if (!LIVE_OR_PAUSED.includes(sandbox.state as SandboxState)) throw KilnError.notFound(`sandbox ${sandboxId}`);
    if (PAUSED_OR_PAUSING.includes(sandbox.state as SandboxState) && !(await this.trafficMayResume(sandbox))) {
      throw new KilnError(
        ErrorCode.Conflict,
        sandbox.autoResume
          ? `sandbox ${sandboxId} is paused without its memory: resume it explicitly (Sandbox.connect)`
          : `sandbox ${sandboxId} is paused: resume it (Sandbox.connect) before sending traffic`,
      );
    }
    if (sandbox.state !== SandboxState.Running) await this.resumeRecord(sandbox, undefined, undefined);
    return this.route(sandboxId);
  }

  /** The row once it left pausing/resuming (or as it is when that takes longer than those deadlines allow). */
  private async settled(sandbox: SandboxRecord): Promise<SandboxRecord> {
    const waitUntil = Date.now() + pauseDeadlineMs(this.env) + resumeDeadlineMs(this.env) + this.env.SANDBOX_RECONCILE_GRACE_MS;
    let current = sandbox;
    while ((current.state === SandboxState.Pausing || current.state === SandboxState.Resuming) && Date.now() < waitUntil) {
      if (isPastDeadline(current)) await this.failPastDeadline(current);
      else await sleep(SETTLE_POLL_MS);
      const next = await this.sandboxes.find(sandbox.id);
      if (!next) throw KilnError.notFound(`sandbox ${sandbox.id}`);
      current = next;
    }
    return current;
  }

  /** Whether traffic may resume this paused sandbox: autoResume, and a pause that kept memory (E2B). */
  private async trafficMayResume(sandbox: SandboxRecord): Promise<boolean> {
    if (!sandbox.autoResume) return false;
    const pause = await this.sandboxes.pauseOf(sandbox.id);
    return pause === null ? sandbox.autoPauseMemory : pause.keepMemory;
  }

  /**
   * Brings a paused sandbox back: paused → resuming (deadline) → host ResumeSandbox → running with a new expiry and
   * timeout job. A caller that finds it pausing or resuming waits for that to settle first, so two resumes never both
   * reach the host; one that finds it running (another caller resumed it) returns it.
   */
  private async resumeRecord(sandbox: SandboxRecord, timeoutSeconds: number | undefined, autoPause: boolean | undefined): Promise<SandboxRecord> {
    const waitUntil = Date.now() + pauseDeadlineMs(this.env) + resumeDeadlineMs(this.env) + this.env.SANDBOX_RECONCILE_GRACE_MS;
    let current: SandboxRecord | null = sandbox;
    while (current) {
      if (current.state === SandboxState.Running) return current;
      if (current.state === SandboxState.Paused) {
        const deadline = new Date(Date.now() + resumeDeadlineMs(this.env));
        // A resumed sandbox holds vCPUs and memory again: it must fit the team's quota, as a create must (429).
        const resuming = await this.moveTo(current, [SandboxState.Paused], SandboxState.Resuming, {
          deadlineAt: deadline,
          reason: 'resume requested',
          quota: this.quotaDefaults(),
        });
        if (resuming) return this.resumeOnHost(resuming, deadline, timeoutSeconds, autoPause);
      } else if (current.state === SandboxState.Pausing || current.state === SandboxState.Resuming) {
        if (Date.now() > waitUntil) break;
        if (isPastDeadline(current)) await this.failPastDeadline(current);
        else await sleep(SETTLE_POLL_MS);
      } else {
        throw KilnError.notFound(`sandbox ${sandbox.id}`);
      }
      current = await this.sandboxes.find(sandbox.id);
    }
    if (!current) throw KilnError.notFound(`sandbox ${sandbox.id}`);
    throw new KilnError(ErrorCode.Unavailable, `sandbox ${sandbox.id} is still ${current.state}; try again`, RETRY_AFTER_SECONDS);
  }

  private async resumeOnHost(
    resuming: SandboxRecord,
    deadline: Date,
    timeoutSeconds: number | undefined,
    autoPause: boolean | undefined,
  ): Promise<SandboxRecord> {
    const id = resuming.id;
    const host = resuming.hostId ? await this.hosts.get(resuming.hostId) : null;
    if (!host) {
      await this.moveTo(resuming, [SandboxState.Resuming], SandboxState.Paused, { reason: 'resume failed: its host is not registered' });
      throw new KilnError(ErrorCode.Unavailable, `host of sandbox ${id} is not registered`, RETRY_AFTER_SECONDS);
    }
    const timeout = timeoutSeconds ?? resuming.timeoutSeconds;
    try {
      await this.agents.call(
        `resume ${id} on ${host.id}`,
        this.agents.for(host.id, host.address).resumeSandbox({
          sandboxId: id,
          timeoutSeconds: timeout,
          envdAccessToken: this.tokens.envdAccessToken(id),
          egress: effectiveEgressPolicy(networkOf(resuming)),
        }),
        Math.max(MIN_HOST_ATTEMPT_MS, deadline.getTime() - Date.now()),
      );
    } catch (error) {
      const failure = asKilnError(error);
      if (failure.code === ErrorCode.NotFound) {
        await this.markGone(id, SandboxState.Error, `resume failed: the host no longer has the sandbox (${failure.message})`);
        throw KilnError.notFound(`sandbox ${id}`);
      }
      // Back to paused with its artifacts (the host guarantees that), unless the host has it running after all.
      if (failure.code === ErrorCode.FailedPrecondition) {
        await this.moveTo(resuming, [SandboxState.Resuming], SandboxState.Paused, { reason: `resume failed: ${failure.message}` });
        throw failure;
      }
      // The host could not be asked (its agent died, say): the resume may have committed there, so the row stays
      // resuming and the deadline sweep settles it to what the host reports once it answers, as a pause's does.
      // (Moving it back to paused here left a sandbox running on its host under a paused row, with no timeout.)
      await this.settleWithHost(resuming, `resume failed: ${failure.message}`, undefined, timeout);
      const now = await this.sandboxes.find(id);
      if (now?.state === SandboxState.Running) return now;
      throw failure;
    }
    const now = new Date();
    const running = await this.moveTo(resuming, [SandboxState.Resuming], SandboxState.Running, {
      expiresAt: new Date(now.getTime() + timeout * 1000),
      timeoutSeconds: timeout,
      reason: 'resumed',
      ...(autoPause !== undefined ? { autoPause } : {}),
    });
    if (!running) {
      // Killed while resuming: the kill's destroy may have run before the VM was back, so remove it again.
      await this.destroyOnHost(host.id, host.address, id);
      throw await this.endedWhile(id, 'resuming');
    }
    await this.timeouts.schedule(id, running.expiresAt);
    return running;
  }

  /**
   * A pause or resume that failed or outlived its deadline: the host says whether the VM is running or paused (it
   * never leaves one half-way) and the row follows it; a host without the sandbox fails the row. Returns false when
   * the host could not be asked (the row is left for the deadline sweep).
   */
  private async settleWithHost(sandbox: SandboxRecord, reason: string, keepMemory?: boolean, timeoutSeconds?: number): Promise<boolean> {
    const from = sandbox.state as SandboxState;
    const host = sandbox.hostId ? await this.hosts.get(sandbox.hostId) : null;
    if (!host) return false;
    let onHost: 'running' | 'paused' | 'gone' | 'unknown';
    try {
      const info = await this.agents.call(`get ${sandbox.id} on ${host.id}`, this.agents.for(host.id, host.address).getSandbox({ sandboxId: sandbox.id }), 10_000);
      onHost =
        info.state === HostSandboxState.SANDBOX_STATE_RUNNING
          ? 'running'
          : info.state === HostSandboxState.SANDBOX_STATE_PAUSED
            ? 'paused'
            : info.state === HostSandboxState.SANDBOX_STATE_EXITED || info.state === HostSandboxState.SANDBOX_STATE_STOPPING
              ? 'gone'
              : 'unknown';
    } catch (error) {
      onHost = asKilnError(error).code === ErrorCode.NotFound ? 'gone' : 'unknown';
    }
    this.logger.warn(`sandbox ${sandbox.id} ${reason}; its host has it ${onHost}`);
    if (onHost === 'unknown') return false;
    if (onHost === 'gone') return this.markGone(sandbox.id, SandboxState.Error, `${reason}; the host no longer has the sandbox`);
    if (onHost === 'paused') {
      if (from === SandboxState.Pausing && !(await this.sandboxes.pauseOf(sandbox.id))) {
        // The host's report was lost: what is known is that it paused, with the memory the caller asked for.
        await this.sandboxes.recordPause(sandbox.id, host.id, {
          keepMemory: keepMemory ?? sandbox.autoPauseMemory,
          memoryBytes: 0,
          stateBytes: 0,
          diskBytes: 0,
          manifestSha256: '',
          reported: false,
        });
      }
      return (await this.moveTo(sandbox, [from], SandboxState.Paused, { reason })) !== null;
    }
    const now = new Date();
    const expiresAt =
      from === SandboxState.Resuming ? new Date(now.getTime() + (timeoutSeconds ?? sandbox.timeoutSeconds) * 1000) : sandbox.expiresAt;
    const running = await this.moveTo(sandbox, [from], SandboxState.Running, {
      reason,
      expiresAt,
      ...(from === SandboxState.Resuming ? { timeoutSeconds: timeoutSeconds ?? sandbox.timeoutSeconds } : {}),
    });
    // Running again with the timeout it had (or a resume's new one); one already past fires at once.
    if (running) await this.timeouts.schedule(sandbox.id, running.expiresAt);
    return running !== null;
  }

  /**
   * `POST /sandboxes/{id}/fork`: `count` new sandboxes from a checkpoint of the running source (which keeps running).
   * Each fork is its own row, checked against the team's quota on its own; the host gets one ForkSandbox with every
   * fork that passed, and each row follows its own result. The answer has one entry per requested fork, in order.
   */
  async fork(command: ForkCommand): Promise<ForkReply> {
    const count = command.count ?? 1;
    if (!Number.isInteger(count) || count < 1 || count > 100) throw KilnError.invalid('count must be an integer from 1 to 100');
    const source = await this.requireLive(command);
    if (source.state !== SandboxState.Running) {
      throw new KilnError(ErrorCode.Conflict, `sandbox ${source.id} is ${source.state}: only a running sandbox can be forked`);
    }
    const host = await this.requireHost(source);
    const timeoutSeconds = command.timeoutSeconds ?? DEFAULT_SANDBOX_TIMEOUT_SECONDS;
    const deadline = new Date(Date.now() + this.env.SANDBOX_HOST_CREATE_DEADLINE_MS);
    const network = networkOf(source);
    const slots: Array<{ record: SandboxRecord } | { error: KilnError }> = [];
    for (let i = 0; i < count; i++) {
      try {
        const { sandbox } = await this.sandboxes.createPending(
          {
            id: newSandboxId(),
            teamId: source.teamId,
            templateId: source.templateId,
            buildId: source.buildId ?? undefined,
            alias: source.alias ?? undefined,
            vcpus: source.vcpus,
            memoryMib: source.memoryMib,
            diskMib: source.diskMib,
            timeoutSeconds,
            autoPause: false,
            metadata: (source.metadata ?? {}) as Record<string, string>,
            network,
            deadlineAt: deadline,
          },
          this.quotaDefaults(),
        );
        const starting = await this.moveTo(sandbox, [SandboxState.Pending], SandboxState.Starting, { hostId: host.id, reason: `fork of ${source.id}` });
        slots.push(starting ? { record: starting } : { error: await this.endedWhileStarting(sandbox.id) });
      } catch (error) {
        slots.push({ error: asKilnError(error) });
      }
    }
    const targets = slots.flatMap((slot) => ('record' in slot ? [slot.record] : []));
    let response: ForkSandboxResponse | undefined;
    let callError: KilnError | undefined;
    if (targets.length > 0) {
      try {
        response = await this.agents.call(
          `fork ${source.id} on ${host.id}`,
          this.agents.for(host.id, host.address).forkSandbox({
            sourceSandboxId: source.id,
            forks: targets.map((target) => ({
              sandboxId: target.id,
              envdAccessToken: this.tokens.envdAccessToken(target.id),
              timeoutSeconds,
              metadata: (target.metadata ?? {}) as Record<string, string>,
              teamId: target.teamId,
              egress: effectiveEgressPolicy(network),
            })),
          }),
          Math.max(MIN_HOST_ATTEMPT_MS, deadline.getTime() - Date.now()),
        );
      } catch (error) {
        callError = asKilnError(error);
      }
    }
    const byId = new Map((response?.results ?? []).map((result) => [result.sandboxId, result]));
    const results: ForkResultView[] = [];
    for (const slot of slots) {
      if ('error' in slot) {
        results.push({ error: { code: slot.error.httpStatus, message: slot.error.message } });
        continue;
      }
      results.push(await this.settleFork(slot.record, byId.get(slot.record.id), callError, host));
    }
    return { results };
  }

  private async settleFork(
    fork: SandboxRecord,
    result: ForkSandboxResponse['results'][number] | undefined,
    callError: KilnError | undefined,
    host: { id: string; address: string },
  ): Promise<ForkResultView> {
    if (result?.sandbox) {
      const now = new Date();
      const running = await this.moveTo(fork, [SandboxState.Starting], SandboxState.Running, {
        startedAt: now,
        expiresAt: new Date(now.getTime() + fork.timeoutSeconds * 1000),
        started: { vcpus: result.sandbox.vcpus || fork.vcpus, memoryMib: result.sandbox.memoryMib || fork.memoryMib, egress: egressOf(result.sandbox) },
        spawnedFromTemplate: fork.templateId,
      });
      if (!running) {
        await this.destroyOnHost(host.id, host.address, fork.id);
        const error = await this.endedWhileStarting(fork.id);
        return { error: { code: error.httpStatus, message: error.message } };
      }
      await this.timeouts.schedule(running.id, running.expiresAt);
      return { sandbox: this.view(running) };
    }
    const failure = result
      ? new KilnError(errorCodeForGrpcName(result.errorCode), `fork ${fork.id} did not start: ${result.errorMessage || result.errorCode || 'no reason given'}`)
      : (callError ?? new KilnError(ErrorCode.Internal, `fork ${fork.id}: the host reported no result for it`));
    await this.moveTo(fork, [SandboxState.Starting], SandboxState.Error, { reason: failure.message, endedAt: new Date() });
    // Without a result from the host, a VM may still exist: removed (or by reconcile's orphan pass).
    if (!result) void this.destroyOnHost(host.id, host.address, fork.id);
    return { error: { code: failure.httpStatus, message: failure.message } };
  }

  /** The sandbox's registered host, or Unavailable. */
  async requireHost(sandbox: SandboxRecord): Promise<{ id: string; address: string }> {
    const host = sandbox.hostId ? await this.hosts.get(sandbox.hostId) : null;
    if (!host) throw new KilnError(ErrorCode.Unavailable, `host of sandbox ${sandbox.id} is not registered`, RETRY_AFTER_SECONDS);
    return host;
  }

  private async endedWhile(id: string, what: string): Promise<KilnError> {
    const now = await this.sandboxes.find(id);
    return new KilnError(ErrorCode.NotFound, `sandbox ${id} was ${now?.state ?? 'removed'} while ${what}`);
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
      ...(PAUSED_OR_PAUSING.includes(sandbox.state as SandboxState) ? { autoResume: await this.trafficMayResume(sandbox) } : {}),
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

  /**
   * Timeout job: kills, or pauses with autoPause (E2B onTimeout 'pause'), unless extended since. Only a running
   * sandbox expires: a paused one stays paused (its job was cancelled with the pause; a late one finds it paused).
   */
  async expire(job: SandboxTimeoutJob): Promise<void> {
    const sandbox = await this.sandboxes.find(job.sandboxId);
    if (!sandbox || sandbox.state !== SandboxState.Running) return;
    if (sandbox.expiresAt.getTime() > Date.now() + 250) return; // refreshed after this job was queued
    if (sandbox.autoPause) {
      this.logger.log(`sandbox ${sandbox.id} reached its timeout: pausing it`);
      try {
        await this.pauseRecord(sandbox, sandbox.autoPauseMemory, 'timeout (autoPause)');
      } catch (error) {
        // Left running or paused as the host says (pauseRecord settles it); a running one is retried by the expiry sweep.
        this.logger.warn(`pause at timeout of ${sandbox.id} failed: ${error instanceof Error ? error.message : String(error)}`);
      }
      return;
    }
    this.logger.log(`sandbox ${sandbox.id} reached its timeout`);
    await this.killRecord(sandbox, 'timeout');
  }

  /**
   * Called by reconcile and host events: the VM is gone, so the record follows. `from` narrows the states it may be
   * ended from (a lost host ends running sandboxes, never a paused one that changed state since it was read).
   */
  async markGone(sandboxId: string, to: SandboxState.Killed | SandboxState.Error, reason: string, from: readonly SandboxState[] = LIVE_OR_PAUSED): Promise<boolean> {
    const sandbox = await this.sandboxes.find(sandboxId);
    if (!sandbox) return false;
    const moved = await this.moveTo(sandbox, [...from], to, { reason, endedAt: new Date() });
    if (moved) {
      await this.timeouts.cancel(sandboxId);
      await this.sandboxes.clearPause(sandboxId);
    }
    return moved !== null;
  }

  /** The team's sandbox if it is live or paused (NotFound otherwise); a transition past its deadline is settled first. */
  async requireLive(ref: SandboxRef): Promise<SandboxRecord> {
    const sandbox = await this.sandboxes.findForTeam(ref.sandboxId, ref.teamId);
    if (!sandbox || !LIVE_OR_PAUSED.includes(sandbox.state as SandboxState)) throw KilnError.notFound(`sandbox ${ref.sandboxId}`);
    if (isPastDeadline(sandbox)) {
      // Reading it settles it: no caller sees a transition that can no longer finish as if it still might.
      await this.failPastDeadline(sandbox);
      const settled = await this.sandboxes.find(sandbox.id);
      // A pause or resume past its deadline settles to running or paused (what the host has), or keeps waiting for a
      // host that cannot be asked yet: either way it stays visible.
      const waitingForHost = settled?.state === SandboxState.Pausing || settled?.state === SandboxState.Resuming;
      if (settled && LIVE_OR_PAUSED.includes(settled.state as SandboxState) && (!isTransitional(settled.state) || waitingForHost)) return settled;
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

function alreadyPaused(id: string): KilnError {
  return new KilnError(ErrorCode.Conflict, `sandbox ${id} is already paused`);
}

function asKilnError(error: unknown): KilnError {
  return error instanceof KilnError ? error : new KilnError(ErrorCode.Internal, error instanceof Error ? error.message : String(error));
}

/** A ForkResult's error_code (a gRPC status name such as RESOURCE_EXHAUSTED) as Kiln's error code. */
function errorCodeForGrpcName(name: string): ErrorCode {
  const status = (GrpcStatus as unknown as Record<string, number | undefined>)[name];
  return errorCodeForGrpcStatus(status ?? GrpcStatus.UNKNOWN);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
