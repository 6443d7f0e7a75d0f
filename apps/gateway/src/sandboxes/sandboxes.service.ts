import { Injectable } from '@nestjs/common';
import { GatewayEnv } from '@kiln/config';
import {
  DEFAULT_SANDBOX_TIMEOUT_SECONDS,
  KilnError,
  NewSandboxDto,
  normaliseEgressPolicy,
  UpdateSandboxNetworkDto,
  ResumeSandboxDto,
  SANDBOX_LIST_DEFAULT_LIMIT,
  SandboxState,
  SandboxView,
  TERMINAL_SANDBOX_STATES,
} from '@kiln/contracts';
import { ForkReply, MessagingClient, ResumeReply, SandboxLogLine, SnapshotInfoView, SnapshotPage, Subjects } from '@kiln/messaging';
import { lifecycleOf } from './unsupported-create-options';
import { SandboxRouteCache } from '../traffic/sandbox-route.cache';
import { GuestMetricsClient } from './guest-metrics.client';
import { SandboxListFilter } from './sandbox-list-query';
import { SandboxMetricBody } from './sandbox-responses';

/** v1 `GET /sandboxes` has no paging: it lists every running sandbox, up to this many. */
const V1_LIST_MAX = 10_000;
const V1_LIST_PAGE = 1_000;

export interface LogQuery {
  /** Only lines at or after this time (ms since epoch). */
  sinceMs?: number;
  limit: number;
  direction: 'forward' | 'backward';
  search?: string;
}

/**
 * The sandbox API's logic: every call is a team-scoped request to the scheduler
 * over NATS. A sandbox of another team is indistinguishable from a missing one.
 */
@Injectable()
export class SandboxesService {
  constructor(
    private readonly messaging: MessagingClient,
    private readonly env: GatewayEnv,
    private readonly routes: SandboxRouteCache,
    private readonly guestMetrics: GuestMetricsClient,
  ) {}

  create(teamId: string, body: NewSandboxDto, idempotencyKey?: string): Promise<SandboxView> {
    const lifecycle = lifecycleOf(body);
    return this.messaging.request(
      Subjects.sandboxCreate,
      {
        teamId,
        templateRef: body.templateID,
        timeoutSeconds: body.timeout ?? DEFAULT_SANDBOX_TIMEOUT_SECONDS,
        autoPause: lifecycle.autoPause,
        autoPauseMemory: lifecycle.autoPauseMemory,
        autoResume: lifecycle.autoResume,
        network: {
          egress: normaliseEgressPolicy(body.network ?? {}),
          allowInternetAccess: body.allow_internet_access ?? null,
          allowPublicTraffic: body.network?.allowPublicTraffic ?? true,
          ...(body.network?.maskRequestHost ? { maskRequestHost: body.network.maskRequestHost } : {}),
        },
        metadata: body.metadata ?? {},
        envVars: body.envVars ?? {},
        // Scoped by team so two teams' keys can never collide.
        ...(idempotencyKey ? { requestKey: `${teamId}:${idempotencyKey}` } : {}),
      },
      this.env.SANDBOX_CREATE_TIMEOUT_MS,
    );
  }

  /** Replaces a running sandbox's egress rules; fields the body omits are cleared (E2B). */
  async updateNetwork(teamId: string, sandboxId: string, body: UpdateSandboxNetworkDto): Promise<void> {
    await this.messaging.request(
      Subjects.sandboxUpdateNetwork,
      { teamId, sandboxId, egress: normaliseEgressPolicy(body), allowInternetAccess: body.allow_internet_access ?? null },
      this.env.NATS_REQUEST_TIMEOUT_MS,
    );
  }

  async get(teamId: string, sandboxId: string): Promise<SandboxView> {
    const view = await this.messaging.request(Subjects.sandboxGet, { teamId, sandboxId }, this.env.NATS_REQUEST_TIMEOUT_MS);
    return this.requireVisible(view, teamId, sandboxId);
  }

  /** One page, filtered and ordered by the scheduler's query (never by fetching everything here). */
  async list(teamId: string, filter: SandboxListFilter): Promise<{ sandboxes: SandboxView[]; nextToken?: string; totalRunning?: number }> {
    const page = await this.messaging.request(
      Subjects.sandboxList,
      {
        teamId,
        states: filter.states,
        metadata: filter.metadata,
        templateRef: filter.templateRef,
        startedAfter: filter.startedAfter?.toISOString(),
        order: filter.order,
        limit: filter.limit ?? SANDBOX_LIST_DEFAULT_LIMIT,
        nextToken: filter.nextToken,
      },
      this.env.NATS_REQUEST_TIMEOUT_MS,
    );
    return { sandboxes: page.sandboxes.filter((s) => isVisible(s, teamId)), nextToken: page.nextToken, totalRunning: page.totalRunning };
  }

  /** Every running sandbox (E2B's deprecated v1 list), following the scheduler's pages. */
  async listAllRunning(teamId: string, metadata?: Record<string, string>): Promise<SandboxView[]> {
    const all: SandboxView[] = [];
    let nextToken: string | undefined;
    do {
      const page = await this.list(teamId, { states: ['running'], metadata, limit: V1_LIST_PAGE, nextToken });
      all.push(...page.sandboxes);
      nextToken = page.nextToken;
    } while (nextToken && all.length < V1_LIST_MAX);
    return all;
  }

  async kill(teamId: string, sandboxId: string): Promise<void> {
    const reply = await this.messaging.request(Subjects.sandboxKill, { teamId, sandboxId }, this.env.NATS_REQUEST_TIMEOUT_MS);
    this.routes.invalidate(sandboxId);
    // E2B answers 404 for a sandbox that is already gone; the SDK's kill() turns that into `false`.
    if (!reply.killed) throw KilnError.notFound(`sandbox ${sandboxId}`);
  }

  async setTimeout(teamId: string, sandboxId: string, timeoutSeconds: number): Promise<void> {
    await this.messaging.request(Subjects.sandboxSetTimeout, { teamId, sandboxId, timeoutSeconds }, this.env.NATS_REQUEST_TIMEOUT_MS);
  }

  async refresh(teamId: string, sandboxId: string, durationSeconds?: number): Promise<void> {
    await this.messaging.request(Subjects.sandboxRefresh, { teamId, sandboxId, durationSeconds }, this.env.NATS_REQUEST_TIMEOUT_MS);
  }

  /**
   * Pause, resume, fork and snapshot wait on a host like a create does (a resume may first wait for a pause in
   * flight), so the scheduler gets the create's budget to answer within.
   */
  async pause(teamId: string, sandboxId: string, keepMemory: boolean): Promise<void> {
    await this.messaging.request(Subjects.sandboxPause, { teamId, sandboxId, keepMemory }, this.env.SANDBOX_CREATE_TIMEOUT_MS);
    this.routes.invalidate(sandboxId);
  }

  async resume(teamId: string, sandboxId: string, body: ResumeSandboxDto): Promise<ResumeReply> {
    const reply = await this.messaging.request(
      Subjects.sandboxResume,
      { teamId, sandboxId, timeoutSeconds: body.timeout, autoPause: body.autoPause },
      this.env.SANDBOX_CREATE_TIMEOUT_MS,
    );
    this.routes.invalidate(sandboxId);
    return { sandbox: this.requireVisible(reply.sandbox, teamId, sandboxId), resumed: reply.resumed };
  }

  async connect(teamId: string, sandboxId: string, body: ResumeSandboxDto): Promise<ResumeReply> {
    const reply = await this.messaging.request(
      Subjects.sandboxConnect,
      { teamId, sandboxId, timeoutSeconds: body.timeout, autoPause: body.autoPause },
      this.env.SANDBOX_CREATE_TIMEOUT_MS,
    );
    if (reply.resumed) this.routes.invalidate(sandboxId);
    return { sandbox: this.requireVisible(reply.sandbox, teamId, sandboxId), resumed: reply.resumed };
  }

  fork(teamId: string, sandboxId: string, body: { timeout?: number; count?: number }): Promise<ForkReply> {
    return this.messaging.request(
      Subjects.sandboxFork,
      { teamId, sandboxId, timeoutSeconds: body.timeout, count: body.count },
      this.env.SANDBOX_CREATE_TIMEOUT_MS,
    );
  }

  createSnapshot(teamId: string, sandboxId: string, name?: string): Promise<SnapshotInfoView> {
    return this.messaging.request(Subjects.snapshotCreate, { teamId, sandboxId, ...(name !== undefined ? { name } : {}) }, this.env.SANDBOX_CREATE_TIMEOUT_MS);
  }

  listSnapshots(teamId: string, query: { sandboxID?: string; name?: string; limit?: number; nextToken?: string }): Promise<SnapshotPage> {
    return this.messaging.request(
      Subjects.snapshotList,
      { teamId, sandboxId: query.sandboxID, name: query.name, limit: query.limit, nextToken: query.nextToken },
      this.env.NATS_REQUEST_TIMEOUT_MS,
    );
  }

  /** True when `ref` was a snapshot and is deleted; false when it names a template that is not a snapshot. */
  async deleteSnapshot(teamId: string, ref: string): Promise<boolean> {
    const reply = await this.messaging.request(Subjects.snapshotDelete, { teamId, ref }, this.env.SANDBOX_CREATE_TIMEOUT_MS);
    return reply.wasSnapshot;
  }

  async logs(teamId: string, sandboxId: string, query: LogQuery): Promise<SandboxLogLine[]> {
    const reply = await this.messaging.request(Subjects.sandboxLogs, { teamId, sandboxId }, this.env.NATS_REQUEST_TIMEOUT_MS);
    let lines = reply.logs.filter((l) => {
      if (query.sinceMs !== undefined && Date.parse(l.timestamp) < query.sinceMs) return false;
      return query.search === undefined || l.line.includes(query.search);
    });
    if (query.direction === 'backward') lines = [...lines].reverse();
    return lines.slice(0, query.limit);
  }

  /**
   * The current usage sample from the guest agent. Kiln keeps no metrics history,
   * so a [start, end] window that excludes "now" is empty; so is a paused sandbox.
   */
  async metrics(teamId: string, sandboxId: string, window: { start?: number; end?: number }): Promise<SandboxMetricBody[]> {
    const view = await this.get(teamId, sandboxId);
    if (view.state !== SandboxState.Running) return [];
    const nowSeconds = Math.floor(Date.now() / 1000);
    if ((window.start !== undefined && window.start > nowSeconds) || (window.end !== undefined && window.end < nowSeconds - 1)) return [];
    const route = await this.routes.resolve(sandboxId);
    if (route.teamId !== teamId) throw KilnError.notFound(`sandbox ${sandboxId}`);
    return [await this.guestMetrics.sample(route)];
  }

  private requireVisible(view: SandboxView, teamId: string, sandboxId: string): SandboxView {
    if (!isVisible(view, teamId)) throw KilnError.notFound(`sandbox ${sandboxId}`);
    return view;
  }
}

/** Team scoping is the scheduler's job; this second check costs nothing and makes a leak impossible here. */
function isVisible(view: SandboxView, teamId: string): boolean {
  return view.teamId === teamId && !TERMINAL_SANDBOX_STATES.includes(view.state);
}
