import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { V1_CONTROLLERS, type V1Controller } from './cgroup-v1';
import { V2_CONTROLLERS } from './cgroup-v2';

/** What this host offers: a cgroup2 mount with its available controllers, and v1 hierarchies by controller. */
export interface CgroupHost {
  v2?: { mountPath: string; controllers: string[] };
  /** Mount point of each v1 controller's hierarchy. */
  v1Mounts: Partial<Record<V1Controller, string>>;
  /** The agent's own group in each v1 hierarchy (from /proc/self/cgroup), e.g. "/" or "/system.slice/x". */
  v1OwnPaths: Partial<Record<V1Controller, string>>;
}

/** Mount points by filesystem type from /proc/self/mountinfo. */
export function parseMountinfo(text: string): { cgroup2: string[]; v1: Partial<Record<V1Controller, string>> } {
  const cgroup2: string[] = [];
  const v1: Partial<Record<V1Controller, string>> = {};
  for (const line of text.split('\n')) {
    const [before, after] = line.split(' - ');
    if (!before || !after) continue;
    const mountPoint = unescapeMountPath(before.split(' ')[4] ?? '');
    const [fsType, , superOptions = ''] = after.split(' ');
    if (fsType === 'cgroup2') cgroup2.push(mountPoint);
    if (fsType === 'cgroup') {
      const options = superOptions.split(',');
      for (const controller of V1_CONTROLLERS) if (options.includes(controller)) v1[controller] ??= mountPoint;
    }
  }
  return { cgroup2, v1 };
}

/** The process's group per v1 controller from /proc/<pid>/cgroup ("id:controllers:path" lines). */
export function parseProcCgroup(text: string): Partial<Record<V1Controller, string>> {
  const own: Partial<Record<V1Controller, string>> = {};
  for (const line of text.split('\n')) {
    const match = /^\d+:([^:]*):(.*)$/.exec(line);
    if (!match) continue;
    const controllers = match[1]!.split(',');
    for (const controller of V1_CONTROLLERS) if (controllers.includes(controller)) own[controller] = match[2]!;
  }
  return own;
}

export async function detectCgroupHost(procDir = '/proc/self'): Promise<CgroupHost> {
  const mounts = parseMountinfo(await readFile(join(procDir, 'mountinfo'), 'utf8'));
  const host: CgroupHost = {
    v1Mounts: mounts.v1,
    v1OwnPaths: parseProcCgroup(await readFile(join(procDir, 'cgroup'), 'utf8').catch(() => '')),
  };
  for (const mountPath of mounts.cgroup2) {
    const controllers = (await readFile(join(mountPath, 'cgroup.controllers'), 'utf8').catch(() => '')).split(/\s+/).filter(Boolean);
    // A hybrid host mounts an empty cgroup2 (e.g. /sys/fs/cgroup/unified) next to the v1 hierarchies: prefer the one
    // with controllers.
    if (!host.v2 || controllers.length > host.v2.controllers.length) host.v2 = { mountPath, controllers };
  }
  return host;
}

export function v2Usable(host: CgroupHost): boolean {
  return host.v2 !== undefined && V2_CONTROLLERS.every((controller) => host.v2!.controllers.includes(controller));
}

export function v1Usable(host: CgroupHost): boolean {
  return V1_CONTROLLERS.every((controller) => host.v1Mounts[controller] !== undefined);
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}
