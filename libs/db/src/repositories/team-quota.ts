import { Prisma } from '@prisma/client';
import { ErrorCode, KilnError, SandboxState } from '@kiln/contracts';

/** A team's ceilings over its sandboxes that hold host resources. */
export interface TeamQuota {
  maxConcurrentSandboxes: number;
  maxVcpus: number;
  maxMemoryMib: number;
  /** Over every sandbox that holds a disk on a host: those above and the paused ones (their artifacts). */
  maxDiskMib: number;
}

/**
 * The states whose sandboxes count against a quota: those that hold (or are about to hold) a VM's vCPUs and memory
 * on a host. Paused sandboxes do not: a paused sandbox is a snapshot on disk, it holds no vCPU or memory (E2B counts
 * only running sandboxes as concurrent too). Pausing and resuming still hold the VM, so they count.
 */
export const QUOTA_COUNTED_STATES: readonly SandboxState[] = [
  SandboxState.Pending,
  SandboxState.Starting,
  SandboxState.Running,
  SandboxState.Pausing,
  SandboxState.Resuming,
];

/** Disk is held by every sandbox not ended: a paused one keeps its disk layer and memory checkpoint. */
export const DISK_COUNTED_STATES: readonly SandboxState[] = [...QUOTA_COUNTED_STATES, SandboxState.Paused];

export type QuotaLimit = 'concurrent sandboxes' | 'vCPUs' | 'memory (MiB)' | 'disk (MiB)';

/** A create that would take the team over one of its limits: 429 with the limit named. */
export class TeamQuotaExceededError extends KilnError {
  constructor(
    readonly limit: QuotaLimit,
    readonly max: number,
    readonly inUse: number,
    readonly requested: number,
  ) {
    super(
      ErrorCode.QuotaExceeded,
      `team quota exceeded for ${limit}: ${inUse} in use + ${requested} requested would exceed the team's limit of ${max}`,
    );
    this.name = 'TeamQuotaExceededError';
  }
}

interface TeamQuotaRow {
  max_concurrent_sandboxes: number | null;
  max_vcpus: number | null;
  max_memory_mib: number | null;
  max_disk_mib: number | null;
}

/**
 * Takes the team's row lock (held until the surrounding transaction ends), then checks that one more sandbox of
 * `wanted`'s size fits the team's quota. A concurrent create of the same team waits on the lock and, once it has it,
 * counts the sandbox this transaction inserted (read committed: each statement sees what committed before it).
 */
/**
 * Bounds of a transaction that takes a team's row lock (creates and quota-counted transitions). A burst of one team's
 * creates queues on that lock and, while queued, holds pooled connections, so the next transaction may wait for a
 * connection longer than Prisma's default 2 s (`maxWait`) and its own lock wait counts against the default 5 s
 * `timeout`. Each one is a few short statements; these bounds let a burst of 50 on two cores drain instead of failing.
 */
export const TEAM_LOCK_TRANSACTION = { maxWait: 15_000, timeout: 15_000 } as const;

export async function lockTeamAndCheckQuota(
  tx: Prisma.TransactionClient,
  wanted: { teamId: string; vcpus: number; memoryMib: number; diskMib: number; state?: string },
  defaults: TeamQuota,
): Promise<void> {
  const [team] = await tx.$queryRaw<TeamQuotaRow[]>`
    SELECT max_concurrent_sandboxes, max_vcpus, max_memory_mib, max_disk_mib FROM teams WHERE id = ${wanted.teamId}::uuid FOR UPDATE`;
  if (!team) throw KilnError.notFound(`team ${wanted.teamId}`);
  const quota: TeamQuota = {
    maxConcurrentSandboxes: team.max_concurrent_sandboxes ?? defaults.maxConcurrentSandboxes,
    maxVcpus: team.max_vcpus ?? defaults.maxVcpus,
    maxMemoryMib: team.max_memory_mib ?? defaults.maxMemoryMib,
    maxDiskMib: team.max_disk_mib ?? defaults.maxDiskMib,
  };
  const usage = await tx.sandbox.aggregate({
    where: { teamId: wanted.teamId, state: { in: [...QUOTA_COUNTED_STATES] } },
    _count: { _all: true },
    _sum: { vcpus: true, memoryMib: true },
  });
  const disk = await tx.sandbox.aggregate({
    where: { teamId: wanted.teamId, state: { in: [...DISK_COUNTED_STATES] } },
    _sum: { diskMib: true },
  });
  // A paused sandbox being resumed already holds its disk: only a new sandbox adds one.
  const wantedDisk = wanted.state !== undefined && DISK_COUNTED_STATES.includes(wanted.state as SandboxState) ? 0 : wanted.diskMib;
  const checks: Array<[QuotaLimit, number, number, number]> = [
    ['concurrent sandboxes', quota.maxConcurrentSandboxes, usage._count._all, 1],
    ['vCPUs', quota.maxVcpus, usage._sum.vcpus ?? 0, wanted.vcpus],
    ['memory (MiB)', quota.maxMemoryMib, usage._sum.memoryMib ?? 0, wanted.memoryMib],
    ['disk (MiB)', quota.maxDiskMib, disk._sum.diskMib ?? 0, wantedDisk],
  ];
  for (const [limit, max, inUse, requested] of checks) {
    if (inUse + requested > max) throw new TeamQuotaExceededError(limit, max, inUse, requested);
  }
}
