import { writeFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseLimit, parsePids, type CgroupBackend, type CgroupLimits } from './cgroup-backend';
import { CgroupSetupError, CgroupUnavailableError } from './cgroup.errors';

export const V2_CONTROLLERS = ['cpu', 'memory', 'pids'] as const;

export interface CgroupV2Options {
  /**
   * How a child directory is removed. A cgroupfs rmdir succeeds while the interface files are listed; a plain
   * directory standing in for the mount (tests) needs a recursive removal instead.
   */
  removeDir?: (path: string) => Promise<void>;
}

/**
 * cgroup v2: one unified tree. The parent sits at `<mount>/<parent>`, not under the agent's own group, because a
 * group holding processes cannot hand controllers to its children (the "no internal processes" rule).
 */
export class CgroupV2 implements CgroupBackend {
  readonly version = 'v2' as const;
  readonly parentPaths: readonly string[];
  private readonly parentDir: string;
  private readonly removeDir: (path: string) => Promise<void>;

  constructor(
    private readonly mountPath: string,
    parent: string,
    options: CgroupV2Options = {},
  ) {
    this.parentDir = join(mountPath, parent);
    this.parentPaths = [this.parentDir];
    this.removeDir = options.removeDir ?? ((path) => rmdir(path));
  }

  async ensureParent(): Promise<void> {
    const available = (await readFile(join(this.mountPath, 'cgroup.controllers'), 'utf8').catch(() => '')).split(/\s+/);
    const missing = V2_CONTROLLERS.filter((controller) => !available.includes(controller));
    if (missing.length > 0) {
      throw new CgroupUnavailableError(
        `cgroup v2 at ${this.mountPath} lacks the ${missing.join(', ')} controller(s) (bound to cgroup v1 hierarchies?)`,
      );
    }
    await mkdir(this.parentDir, { recursive: true });
    // Every group from the mount down to the parent must delegate the controllers to its children.
    const relative = this.parentDir.slice(this.mountPath.length).split('/').filter(Boolean);
    let dir = this.mountPath;
    for (const segment of ['', ...relative]) {
      dir = segment ? join(dir, segment) : dir;
      await enableControllers(dir);
    }
  }

  async create(name: string, limits: CgroupLimits): Promise<void> {
    const dir = this.childDir(name);
    await mkdir(dir).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EEXIST') throw error;
    });
    await writeFile(join(dir, 'cpu.max'), `${limits.cpuQuotaUs} ${limits.cpuPeriodUs}`);
    await writeFile(join(dir, 'memory.max'), String(limits.memoryBytes));
    await writeFile(join(dir, 'pids.max'), String(limits.pidsMax));
  }

  enterSync(name: string, pid: number): void {
    writeFileSync(join(this.childDir(name), 'cgroup.procs'), String(pid));
  }

  async processes(name: string): Promise<number[]> {
    return parsePids(await readFile(join(this.childDir(name), 'cgroup.procs'), 'utf8').catch(() => ''));
  }

  async remove(name: string): Promise<boolean> {
    return removeGroupDir(this.childDir(name), this.removeDir);
  }

  async removeParent(): Promise<boolean> {
    return removeGroupDir(this.parentDir, this.removeDir);
  }

  async children(): Promise<string[]> {
    return childDirectories(this.parentDir);
  }

  async readLimits(name: string): Promise<CgroupLimits> {
    const dir = this.childDir(name);
    const [quota, period] = (await readFile(join(dir, 'cpu.max'), 'utf8')).trim().split(/\s+/);
    return {
      cpuQuotaUs: parseLimit(quota ?? ''),
      cpuPeriodUs: Number(period),
      memoryBytes: parseLimit(await readFile(join(dir, 'memory.max'), 'utf8')),
      pidsMax: parseLimit(await readFile(join(dir, 'pids.max'), 'utf8')),
    };
  }

  paths(name: string): string[] {
    return [this.childDir(name)];
  }

  private childDir(name: string): string {
    return join(this.parentDir, name);
  }
}

async function enableControllers(dir: string): Promise<void> {
  const file = join(dir, 'cgroup.subtree_control');
  const enabled = (await readFile(file, 'utf8').catch(() => '')).split(/\s+/);
  const wanted = V2_CONTROLLERS.filter((controller) => !enabled.includes(controller));
  if (wanted.length === 0) return;
  try {
    await writeFile(file, wanted.map((controller) => `+${controller}`).join(' '));
  } catch (error) {
    throw new CgroupSetupError(`cannot enable ${wanted.join(', ')} in ${file}: ${(error as Error).message}`);
  }
}

/** rmdir of a group: gone already is success, EBUSY (tasks still exiting) is "try again". */
export async function removeGroupDir(dir: string, removeDir: (path: string) => Promise<void> = (path) => rmdir(path)): Promise<boolean> {
  try {
    await removeDir(dir);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return true;
    if (code === 'EBUSY' || code === 'ENOTEMPTY') return false;
    throw error;
  }
}

export async function childDirectories(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  return entries.filter((entry) => entry.isDirectory()).map((entry) => entry.name);
}
