/** Limits of one VM's group, in the units both cgroup versions can express. */
export interface CgroupLimits {
  /** CPU time the group may use per period: vCPUs x period. */
  cpuQuotaUs: number;
  cpuPeriodUs: number;
  memoryBytes: number;
  pidsMax: number;
}

/**
 * One cgroup version's way of keeping a parent group with a child per VM. Names are child names (one path segment);
 * the parent is fixed per backend.
 */
export interface CgroupBackend {
  readonly version: 'v2' | 'v1';
  /** Where the parent lives (one path per controller hierarchy under v1). */
  readonly parentPaths: readonly string[];
  /** Creates the parent (and enables the controllers its children need). Idempotent. */
  ensureParent(): Promise<void>;
  /** Creates (or re-uses) a child and writes its limits. */
  create(name: string, limits: CgroupLimits): Promise<void>;
  /**
   * Moves a process (all its threads) into the child. Synchronous on purpose: called right after the VMM is
   * spawned, it must land before the VMM runs guest code or allocates guest RAM.
   */
  enterSync(name: string, pid: number): void;
  /** Pids in the child; [] when it does not exist. */
  processes(name: string): Promise<number[]>;
  /** Removes an empty child; resolves false when it was still busy (processes exiting). */
  remove(name: string): Promise<boolean>;
  /** Removes the parent once it has no children; resolves false when some are left. */
  removeParent(): Promise<boolean>;
  /** Names of the parent's children. */
  children(): Promise<string[]>;
  /** The limits as the kernel holds them (for checks and tests). */
  readLimits(name: string): Promise<CgroupLimits>;
  /** The child's directories, one per hierarchy. */
  paths(name: string): string[];
}

/** "max" (v2) and the v1 "unlimited" sentinels read back as Infinity. */
export function parseLimit(text: string): number {
  const value = text.trim();
  if (value === 'max' || value === '-1') return Infinity;
  const parsed = Number(value);
  // v1 reports "no memory limit" as a page-rounded LONG_MAX.
  return parsed >= 2 ** 62 ? Infinity : parsed;
}

export function parsePids(text: string): number[] {
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map(Number);
}
