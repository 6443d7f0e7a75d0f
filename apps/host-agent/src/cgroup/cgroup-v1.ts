import { writeFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseLimit, parsePids, type CgroupBackend, type CgroupLimits } from './cgroup-backend';
import { childDirectories, removeGroupDir } from './cgroup-v2';

export const V1_CONTROLLERS = ['cpu', 'memory', 'pids'] as const;
export type V1Controller = (typeof V1_CONTROLLERS)[number];

/**
 * cgroup v1: one hierarchy per controller, so a VM's group is a directory in each of the cpu, memory and pids
 * hierarchies (deduplicated where controllers share a mount). v1 has no "no internal processes" rule, so the
 * parent directories are those of the agent's own groups: whatever limits the agent's service also bounds its VMs.
 */
export class CgroupV1 implements CgroupBackend {
  readonly version = 'v1' as const;
  readonly parentPaths: readonly string[];

  /** @param parents the parent group's directory in each controller's hierarchy. */
  constructor(private readonly parents: Record<V1Controller, string>) {
    this.parentPaths = [...new Set(Object.values(parents))];
  }

  async ensureParent(): Promise<void> {
    for (const dir of this.parentPaths) await mkdir(dir, { recursive: true });
  }

  async create(name: string, limits: CgroupLimits): Promise<void> {
    for (const dir of this.paths(name)) {
      await mkdir(dir).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'EEXIST') throw error;
      });
    }
    const cpu = join(this.parents.cpu, name);
    // The period first: a quota is checked against the period already in place.
    await writeFile(join(cpu, 'cpu.cfs_period_us'), String(limits.cpuPeriodUs));
    await writeFile(join(cpu, 'cpu.cfs_quota_us'), String(limits.cpuQuotaUs));
    await writeFile(join(this.parents.memory, name, 'memory.limit_in_bytes'), String(limits.memoryBytes));
    await writeFile(join(this.parents.pids, name, 'pids.max'), String(limits.pidsMax));
  }

  enterSync(name: string, pid: number): void {
    // cgroup.procs (not tasks) moves every thread of the process.
    for (const dir of this.paths(name)) writeFileSync(join(dir, 'cgroup.procs'), String(pid));
  }

  async processes(name: string): Promise<number[]> {
    const pids = new Set<number>();
    for (const dir of this.paths(name)) {
      for (const pid of parsePids(await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => ''))) pids.add(pid);
    }
    return [...pids];
  }

  async remove(name: string): Promise<boolean> {
    let removed = true;
    for (const dir of this.paths(name)) removed = (await removeGroupDir(dir)) && removed;
    return removed;
  }

  async removeParent(): Promise<boolean> {
    let removed = true;
    for (const dir of this.parentPaths) removed = (await removeGroupDir(dir)) && removed;
    return removed;
  }

  async children(): Promise<string[]> {
    const names = new Set<string>();
    for (const dir of this.parentPaths) for (const name of await childDirectories(dir)) names.add(name);
    return [...names];
  }

  async readLimits(name: string): Promise<CgroupLimits> {
    const read = (controller: V1Controller, file: string) => readFile(join(this.parents[controller], name, file), 'utf8');
    return {
      cpuQuotaUs: parseLimit(await read('cpu', 'cpu.cfs_quota_us')),
      cpuPeriodUs: Number((await read('cpu', 'cpu.cfs_period_us')).trim()),
      memoryBytes: parseLimit(await read('memory', 'memory.limit_in_bytes')),
      pidsMax: parseLimit(await read('pids', 'pids.max')),
    };
  }

  paths(name: string): string[] {
    return this.parentPaths.map((dir) => join(dir, name));
  }
}
