import { Injectable } from '@nestjs/common';
import { Prisma, Sandbox } from '@prisma/client';
import { EgressPolicy, LIVE_SANDBOX_STATES, SandboxNetworkSettings, SandboxState, canTransition } from '@kiln/contracts';
import { TEAM_LOCK_TRANSACTION, TeamQuota, lockTeamAndCheckQuota } from './team-quota';
import { SortOrder } from '../keyset-cursor';
import { PrismaService } from '../prisma.service';

export type SandboxRecord = Sandbox;

/**
 * States a sandbox passes through on its way somewhere else. A row in one always has a deadline (`deadlineAt`,
 * enforced by a CHECK constraint): whoever drives the transition may crash, and reconcile fails rows past it.
 */
export const TRANSITIONAL_SANDBOX_STATES: readonly SandboxState[] = [
  SandboxState.Pending,
  SandboxState.Starting,
  SandboxState.Pausing,
  SandboxState.Resuming,
];

export function isTransitional(state: string): boolean {
  return (TRANSITIONAL_SANDBOX_STATES as readonly string[]).includes(state);
}

export interface NewSandboxRecord {
  id: string;
  teamId: string;
  templateId: string;
  buildId?: string;
  alias?: string;
  vcpus: number;
  memoryMib: number;
  diskMib: number;
  timeoutSeconds: number;
  autoPause: boolean;
  /** Default true. */
  autoPauseMemory?: boolean;
  /** Default false. */
  autoResume?: boolean;
  metadata: Record<string, string>;
  network: SandboxNetworkSettings;
  requestKey?: string;
  /** When the create must have reached running (the scheduler's create budget from now). */
  deadlineAt: Date;
}

/** What the host reported when the sandbox started: stored as the truth about what runs. */
export interface HostStartReport {
  vcpus: number;
  memoryMib: number;
  egress: EgressPolicy;
}

export interface TransitionPatch {
  hostId?: string | null;
  reason?: string;
  startedAt?: Date;
  expiresAt?: Date;
  endedAt?: Date;
  /**
   * Deadline of the transitional state being entered. Omitted when moving between transitional states, the
   * deadline carries over (pending → starting keeps the create's); moving to any other state clears it.
   */
  deadlineAt?: Date;
  /** Set with the move to running: what the host says it started. */
  started?: HostStartReport;
  /** A resume's timeout becomes the sandbox's. */
  timeoutSeconds?: number;
  /** The deprecated `autoPause` of a resume/connect. */
  autoPause?: boolean;
  /**
   * Checked with the move (a resume: the sandbox takes vCPUs and memory again), under the team's row lock like a
   * create; TeamQuotaExceededError leaves the row as it was.
   */
  quota?: TeamQuota;
  /**
   * Set with a create's move to running: this template's spawn counter and last-spawned time move in the same
   * transaction, so they count exactly the creates that reached running (a failed create, or one killed while
   * starting, never counts; a retried create with the same request key makes no new transition, so counts once).
   */
  spawnedFromTemplate?: string;
}

/** A pause as the host reported it (PauseArtifacts), plus whether the host confirmed it (false: settled by GetSandbox). */
export interface PauseArtifactsRecord {
  keepMemory: boolean;
  memoryBytes: number;
  stateBytes: number;
  diskBytes: number;
  manifestSha256: string;
  durationMs?: number;
  reported: boolean;
}

/** Which sandboxes a list shows. Only started sandboxes (`startedAt` set) are ever listed. */
export interface SandboxListFilter {
  teamId: string;
  states: SandboxState[];
  metadata?: Record<string, string>;
  templateId?: string;
  /** Only sandboxes started at or after this time. */
  startedAtOrAfter?: Date;
  /** Leave out transitional rows whose deadline is at or before this: they are failed, only not yet swept. */
  hideTransitionalDueBy?: Date;
}

/** A page of a list: by start time in `order`, the sandbox id breaking ties (E2B: id ascending under desc, and back). */
export interface SandboxPageRequest {
  order: SortOrder;
  limit: number;
  /** The last sandbox of the previous page: this page starts right after it in `order`. */
  after?: { startedAt: Date; id: string };
}

/**
 * The sandbox table and its state machine. Every state change is a conditional
 * update on the current state (compare-and-set) plus an event row, in one transaction.
 */
@Injectable()
export class SandboxRepository {
  /**
   * The tail of each team's queue of quota transactions in this process. Each such transaction takes the team's row
   * lock, and one waiting for it holds a pooled connection all the while: a burst of one team's creates would hold the
   * whole pool waiting on one lock, and every other query of the process would time out waiting for a connection
   * (node-postgres's connectionTimeoutMillis). Queued here instead, they wait without a connection, one per team at a
   * time per process; the row lock still orders them across replicas.
   */
  private readonly teamTurns = new Map<string, Promise<void>>();

  constructor(private readonly prisma: PrismaService) {}

  /** Runs `work` once every earlier quota transaction of `teamId` in this process has ended. */
  private async inTeamTurn<T>(teamId: string, work: () => Promise<T>): Promise<T> {
    const previous = this.teamTurns.get(teamId) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    this.teamTurns.set(teamId, mine);
    await previous;
    try {
      return await work();
    } finally {
      release();
      if (this.teamTurns.get(teamId) === mine) this.teamTurns.delete(teamId);
    }
  }

  /**
   * Inserts a pending sandbox; with a request key, a retry returns the existing row instead. With `quota` (the
   * deployment's defaults; the team's own columns override them) the insert happens only if the team stays within
   * it, else TeamQuotaExceededError: the check and the insert share one transaction holding the team's row lock, so
   * concurrent creates of one team are counted one after another and cannot together pass the quota.
   */
  async createPending(input: NewSandboxRecord, quota?: TeamQuota): Promise<{ sandbox: SandboxRecord; created: boolean }> {
    if (input.requestKey) {
      const existing = await this.prisma.sandbox.findUnique({ where: { requestKey: input.requestKey } });
      if (existing) return { sandbox: existing, created: false };
    }
    try {
      const insert = () =>
        this.prisma.$transaction(async (tx) => {
          if (quota) await lockTeamAndCheckQuota(tx, input, quota);
          const row = await tx.sandbox.create({
            data: {
              id: input.id,
              teamId: input.teamId,
              templateId: input.templateId,
              buildId: input.buildId,
              alias: input.alias,
              state: SandboxState.Pending,
              vcpus: input.vcpus,
              memoryMib: input.memoryMib,
              diskMib: input.diskMib,
              timeoutSeconds: input.timeoutSeconds,
              expiresAt: new Date(Date.now() + input.timeoutSeconds * 1000),
              deadlineAt: input.deadlineAt,
              autoPause: input.autoPause,
              autoPauseMemory: input.autoPauseMemory ?? true,
              autoResume: input.autoResume ?? false,
              metadata: input.metadata,
              egress: { allowOut: input.network.egress.allowOut, denyOut: input.network.egress.denyOut },
              allowInternetAccess: input.network.allowInternetAccess,
              allowPublicTraffic: input.network.allowPublicTraffic,
              maskRequestHost: input.network.maskRequestHost ?? null,
              requestKey: input.requestKey,
            },
          });
          await tx.sandboxEvent.create({ data: { sandboxId: row.id, toState: SandboxState.Pending, reason: 'requested' } });
          return row;
        }, quota ? TEAM_LOCK_TRANSACTION : undefined);
      const sandbox = quota ? await this.inTeamTurn(input.teamId, insert) : await insert();
      return { sandbox, created: true };
    } catch (error) {
      if (input.requestKey && error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2002') {
        const existing = await this.prisma.sandbox.findUnique({ where: { requestKey: input.requestKey } });
        if (existing) return { sandbox: existing, created: false };
      }
      throw error;
    }
  }

  /**
   * Moves the sandbox to `to` if it is currently in one of `from`. Returns the
   * updated row, or null when another caller changed the state first.
   */
  async transition(
    id: string,
    from: SandboxState[],
    to: SandboxState,
    patch: TransitionPatch = {},
  ): Promise<{ sandbox: SandboxRecord; from: SandboxState } | null> {
    const allowedFrom = from.filter((state) => canTransition(state, to));
    if (allowedFrom.length === 0) return null;
    if (patch.quota) {
      // A quota-checked transition (a resume) takes the team's row lock as a create does, so it queues with the team's
      // creates (inTeamTurn). A sandbox's team never changes: reading it first is safe.
      const owner = await this.prisma.sandbox.findUnique({ where: { id }, select: { teamId: true } });
      if (!owner) return null;
      return this.inTeamTurn(owner.teamId, () => this.transitionNow(id, allowedFrom, to, patch));
    }
    return this.transitionNow(id, allowedFrom, to, patch);
  }

  private transitionNow(
    id: string,
    allowedFrom: SandboxState[],
    to: SandboxState,
    patch: TransitionPatch,
  ): Promise<{ sandbox: SandboxRecord; from: SandboxState } | null> {
    return this.prisma.$transaction(async (tx) => {
      const current = await tx.sandbox.findUnique({ where: { id }, select: { state: true, teamId: true, vcpus: true, memoryMib: true, diskMib: true } });
      if (!current || !allowedFrom.includes(current.state as SandboxState)) return null;
      if (patch.quota) await lockTeamAndCheckQuota(tx, current, patch.quota);
      const { count } = await tx.sandbox.updateMany({
        where: { id, state: current.state },
        data: {
          state: to,
          version: { increment: 1 },
          ...(patch.hostId !== undefined ? { hostId: patch.hostId } : {}),
          ...(patch.reason !== undefined ? { stateReason: patch.reason } : {}),
          ...(patch.startedAt ? { startedAt: patch.startedAt } : {}),
          ...(patch.expiresAt ? { expiresAt: patch.expiresAt } : {}),
          ...(patch.endedAt ? { endedAt: patch.endedAt } : {}),
          ...(patch.timeoutSeconds !== undefined ? { timeoutSeconds: patch.timeoutSeconds } : {}),
          ...(patch.autoPause !== undefined ? { autoPause: patch.autoPause } : {}),
          ...(isTransitional(to) ? (patch.deadlineAt ? { deadlineAt: patch.deadlineAt } : {}) : { deadlineAt: null }),
          ...(patch.started
            ? {
                vcpus: patch.started.vcpus,
                memoryMib: patch.started.memoryMib,
                egress: { allowOut: patch.started.egress.allowOut, denyOut: patch.started.egress.denyOut },
              }
            : {}),
        },
      });
      if (count !== 1) return null;
      if (patch.spawnedFromTemplate) {
        // An increment in SQL, not read-modify-write: concurrent creates from one template each count.
        await tx.template.updateMany({
          where: { id: patch.spawnedFromTemplate },
          data: { spawnCount: { increment: 1 }, lastSpawnedAt: patch.startedAt ?? new Date() },
        });
      }
      await tx.sandboxEvent.create({
        data: { sandboxId: id, fromState: current.state, toState: to, reason: patch.reason },
      });
      const sandbox = await tx.sandbox.findUniqueOrThrow({ where: { id } });
      return { sandbox, from: current.state as SandboxState };
      // Bounded as the creates are: in a burst it waits for a pooled connection behind them (and may take the lock).
    }, TEAM_LOCK_TRANSACTION);
  }

  /** Points a starting sandbox at another host (placement fell through to the next candidate). */
  async reassignHost(id: string, hostId: string): Promise<SandboxRecord | null> {
    const { count } = await this.prisma.sandbox.updateMany({
      where: { id, state: SandboxState.Starting },
      data: { hostId, version: { increment: 1 } },
    });
    return count === 1 ? this.find(id) : null;
  }

  findForTeam(id: string, teamId: string): Promise<SandboxRecord | null> {
    return this.prisma.sandbox.findFirst({ where: { id, teamId } });
  }

  find(id: string): Promise<SandboxRecord | null> {
    return this.prisma.sandbox.findUnique({ where: { id } });
  }

  /**
   * One page of the team's started sandboxes, filtered in the query. Keyed on (started_at, id): both are set once
   * (started_at with the move to running) so a row never moves between pages, and sandboxes started while a caller
   * pages land before its first page (desc) or after its last row (asc), never in between.
   */
  list(filter: SandboxListFilter, page: SandboxPageRequest): Promise<SandboxRecord[]> {
    const after: Prisma.SandboxWhereInput[] = page.after
      ? [
          {
            OR:
              page.order === 'desc'
                ? [{ startedAt: { lt: page.after.startedAt } }, { startedAt: page.after.startedAt, id: { gt: page.after.id } }]
                : [{ startedAt: { gt: page.after.startedAt } }, { startedAt: page.after.startedAt, id: { lt: page.after.id } }],
          },
        ]
      : [];
    const where = listWhere(filter);
    return this.prisma.sandbox.findMany({
      where: { ...where, AND: [...where.AND, ...after] },
      orderBy: page.order === 'desc' ? [{ startedAt: 'desc' }, { id: 'asc' }] : [{ startedAt: 'asc' }, { id: 'desc' }],
      take: page.limit,
    });
  }

  /** How many sandboxes the filter matches, across all pages. */
  countListed(filter: SandboxListFilter): Promise<number> {
    return this.prisma.sandbox.count({ where: listWhere(filter) });
  }

  /** Moves the deadline of a row still in `state` (a transition waiting on a host that cannot be asked yet). */
  async extendDeadline(id: string, state: SandboxState, deadlineAt: Date): Promise<boolean> {
    const { count } = await this.prisma.sandbox.updateMany({ where: { id, state }, data: { deadlineAt, version: { increment: 1 } } });
    return count > 0;
  }

  async setExpiry(id: string, expiresAt: Date, timeoutSeconds?: number): Promise<SandboxRecord | null> {
    const { count } = await this.prisma.sandbox.updateMany({
      where: { id, state: { in: [...LIVE_SANDBOX_STATES, SandboxState.Paused] } },
      data: { expiresAt, ...(timeoutSeconds !== undefined ? { timeoutSeconds } : {}) },
    });
    return count === 1 ? this.find(id) : null;
  }

  /** Stores egress rules a running sandbox's host applied (a live update), with the internet-access flag they came from. */
  async setEgress(id: string, egress: EgressPolicy, allowInternetAccess: boolean | null): Promise<SandboxRecord | null> {
    const { count } = await this.prisma.sandbox.updateMany({
      where: { id, state: SandboxState.Running },
      data: { egress: { allowOut: egress.allowOut, denyOut: egress.denyOut }, allowInternetAccess, version: { increment: 1 } },
    });
    return count === 1 ? this.find(id) : null;
  }

  /**
   * Sandboxes placed on a host that the host should have, for reconcile against what it reports. Paused ones count:
   * a paused sandbox stays on its host (its artifacts), so the host lists it and it is no orphan.
   */
  liveOnHost(hostId: string): Promise<SandboxRecord[]> {
    return this.prisma.sandbox.findMany({
      where: {
        hostId,
        state: { in: [SandboxState.Starting, SandboxState.Running, SandboxState.Pausing, SandboxState.Paused, SandboxState.Resuming] },
      },
    });
  }

  /**
   * Stores what the host's pause wrote, as the sandbox's one pause record (a pause over a pause replaces it: the host
   * keeps only what the latest needs).
   */
  async recordPause(sandboxId: string, hostId: string, artifacts: PauseArtifactsRecord): Promise<void> {
    await this.prisma.$transaction(async (tx) => {
      await tx.snapshot.deleteMany({ where: { sandboxId, kind: 'pause' } });
      await tx.snapshot.create({
        data: {
          kind: 'pause',
          sandboxId,
          hostId,
          path: sandboxId,
          manifest: { ...artifacts },
          sizeBytes: BigInt(artifacts.memoryBytes + artifacts.stateBytes + artifacts.diskBytes),
        },
      });
    });
  }

  /** The sandbox's pause record, if it is (or was last) paused. */
  async pauseOf(sandboxId: string): Promise<PauseArtifactsRecord | null> {
    const row = await this.prisma.snapshot.findFirst({ where: { sandboxId, kind: 'pause' } });
    return row ? (row.manifest as unknown as PauseArtifactsRecord) : null;
  }

  /** Forgets the pause record once the host removed the artifacts (the sandbox ended) or the sandbox runs again. */
  async clearPause(sandboxId: string): Promise<void> {
    await this.prisma.snapshot.deleteMany({ where: { sandboxId, kind: 'pause' } });
  }

  /** Resources held per host by sandboxes that are placed and not yet ended. */
  async usageByHost(): Promise<Map<string, { vcpus: number; memoryMib: number; sandboxes: number }>> {
    const rows = await this.prisma.sandbox.groupBy({
      by: ['hostId'],
      where: { hostId: { not: null }, state: { in: [...LIVE_SANDBOX_STATES] } },
      _sum: { vcpus: true, memoryMib: true },
      _count: { _all: true },
    });
    return new Map(
      rows
        .filter((r) => r.hostId !== null)
        .map((r) => [r.hostId as string, { vcpus: r._sum.vcpus ?? 0, memoryMib: r._sum.memoryMib ?? 0, sandboxes: r._count._all }]),
    );
  }

  /**
   * Running sandboxes whose expiry passed more than `graceSeconds` ago: the guarantee behind the timeout jobs, which
   * a crash or a Redis outage can lose. (Transitional rows are covered by `pastDeadline`.)
   */
  overdue(graceSeconds: number): Promise<SandboxRecord[]> {
    return this.prisma.sandbox.findMany({
      where: { state: SandboxState.Running, expiresAt: { lt: new Date(Date.now() - graceSeconds * 1000) } },
      orderBy: { expiresAt: 'asc' },
      take: 100,
    });
  }

  /** Rows still in a transitional state more than `graceMs` after its deadline: their driver is gone or stuck. */
  pastDeadline(graceMs: number): Promise<SandboxRecord[]> {
    return this.prisma.sandbox.findMany({
      where: { state: { in: [...TRANSITIONAL_SANDBOX_STATES] }, deadlineAt: { lt: new Date(Date.now() - graceMs) } },
      orderBy: { deadlineAt: 'asc' },
      take: 100,
    });
  }

  events(id: string) {
    return this.prisma.sandboxEvent.findMany({ where: { sandboxId: id }, orderBy: { id: 'asc' } });
  }
}

function listWhere(filter: SandboxListFilter): Prisma.SandboxWhereInput & { AND: Prisma.SandboxWhereInput[] } {
  const metadata: Prisma.SandboxWhereInput[] = Object.entries(filter.metadata ?? {}).map(([key, value]) => ({
    metadata: { path: [key], equals: value },
  }));
  const notOverdue: Prisma.SandboxWhereInput[] = filter.hideTransitionalDueBy
    ? [{ OR: [{ deadlineAt: null }, { deadlineAt: { gt: filter.hideTransitionalDueBy } }] }]
    : [];
  return {
    teamId: filter.teamId,
    state: { in: filter.states },
    startedAt: filter.startedAtOrAfter ? { not: null, gte: filter.startedAtOrAfter } : { not: null },
    ...(filter.templateId !== undefined ? { templateId: filter.templateId } : {}),
    AND: [...metadata, ...notOverdue],
  };
}
