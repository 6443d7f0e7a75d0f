import { Logger } from '@nestjs/common';
import type { CgroupBackend, CgroupLimits } from './cgroup-backend';
import type { CgroupHost } from './cgroup-detect';
import { CgroupSetupError } from './cgroup.errors';
import { VmCgroupsConfig, type CgroupMode } from './vm-cgroups.config';
import { jailerParentFor, selectBackend, VM_GROUP_PREFIX, VmCgroups, vmGroupName } from './vm-cgroups.service';

/** Groups in memory: what VmCgroups asks of a backend, without a cgroup filesystem. */
class MemoryBackend implements CgroupBackend {
  readonly parentPaths = ['/fake/kiln-t'];
  readonly groups = new Set<string>();

  constructor(readonly version: 'v2' | 'v1') {}

  async ensureParent(): Promise<void> {}
  async create(name: string): Promise<void> {
    this.groups.add(name);
  }
  enterSync(): void {}
  async processes(): Promise<number[]> {
    return [];
  }
  async remove(name: string): Promise<boolean> {
    this.groups.delete(name);
    return true;
  }
  async removeParent(): Promise<boolean> {
    return this.groups.size === 0;
  }
  async children(): Promise<string[]> {
    return [...this.groups];
  }
  async readLimits(): Promise<CgroupLimits> {
    return { cpuQuotaUs: 0, cpuPeriodUs: 0, memoryBytes: 0, pidsMax: 0 };
  }
  paths(name: string): string[] {
    return [`/fake/kiln-t/${name}`];
  }
}

const mounts = { cpu: '/sys/fs/cgroup/cpu,cpuacct', memory: '/sys/fs/cgroup/memory', pids: '/sys/fs/cgroup/pids' };
const v1Host = (own: Record<'cpu' | 'memory' | 'pids', string>): CgroupHost => ({ v1Mounts: mounts, v1OwnPaths: own });
const sameGroups = v1Host({ cpu: '/system.slice/kiln.service', memory: '/system.slice/kiln.service', pids: '/system.slice/kiln.service' });
const rootGroups = v1Host({ cpu: '/', memory: '/', pids: '/' });
/** This machine's layout: the memory hierarchy puts every process in a group of its own, the others at the root. */
const splitGroups = v1Host({ cpu: '/', memory: '/process_api/1bb9', pids: '/' });
const unified: CgroupHost = { v2: { mountPath: '/sys/fs/cgroup', controllers: ['cpu', 'memory', 'pids'] }, v1Mounts: {}, v1OwnPaths: {} };

function cgroupsOn(version: 'v2' | 'v1', host: CgroupHost, mode: CgroupMode = 'auto') {
  const backend = new MemoryBackend(version);
  return { backend, cgroups: new VmCgroups(new VmCgroupsConfig(mode, 'kiln-t', 64, 0, 8), backend, host) };
}

describe("VmCgroups: the Firecracker jailer's parent (--parent-cgroup, relative to each hierarchy's mount)", () => {
  afterEach(() => jest.restoreAllMocks());

  it('v2: the configured parent, at the top of the unified mount as VmCgroups keeps it', () => {
    expect(jailerParentFor('v2', 'kiln-t', unified)).toEqual({ parent: 'kiln-t' });
    // The jailer refuses an absolute parent (CgroupInvalidParentPath).
    expect(jailerParentFor('v2', '/kiln-t', unified)).toEqual({ parent: 'kiln-t' });
  });

  it("v1: the agent's own group plus the parent, when that group is one path in the cpu, memory and pids hierarchies", () => {
    expect(jailerParentFor('v1', 'kiln-t', sameGroups)).toEqual({ parent: 'system.slice/kiln.service/kiln-t' });
    expect(jailerParentFor('v1', 'kiln-t', rootGroups)).toEqual({ parent: 'kiln-t' });
    // <mount>/<that parent> in each hierarchy is where selectBackend keeps VmCgroups' own parent.
    const { parent } = jailerParentFor('v1', 'kiln-t', sameGroups) as { parent: string };
    const backend = selectBackend(new VmCgroupsConfig('v1', 'kiln-t', 64, 0, 8), sameGroups)!;
    expect([...backend.parentPaths].sort()).toEqual(Object.values(mounts).map((mount) => `${mount}/${parent}`).sort());
  });

  it('v1 with the agent in different groups per controller: refused, naming the groups (the jailer takes one parent)', () => {
    const placement = jailerParentFor('v1', 'kiln-t', splitGroups);
    expect(placement).toEqual({
      refused: "the agent's cgroup v1 groups differ per controller (cpu /, memory /process_api/1bb9, pids /) and the jailer takes one --parent-cgroup for all of them",
    });
  });

  it('through VmCgroups: the parent for v2 and same-path v1 hosts; undefined when cgroups are off', async () => {
    expect(await cgroupsOn('v2', unified).cgroups.jailerParent()).toBe('kiln-t');
    expect(await cgroupsOn('v1', sameGroups).cgroups.jailerParent()).toBe('system.slice/kiln.service/kiln-t');
    const off = new VmCgroups(new VmCgroupsConfig('off', 'kiln-t', 64, 0, 8), undefined, rootGroups);
    expect(await off.jailerParent()).toBeUndefined();
  });

  it('auto on a v1 host with split groups: undefined (VMs run without a jailer cgroup), warned once', async () => {
    const warn = jest.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
    const { cgroups } = cgroupsOn('v1', splitGroups);
    expect(await cgroups.jailerParent()).toBeUndefined();
    expect(await cgroups.jailerParent()).toBeUndefined();
    const warnings = warn.mock.calls.map(([message]) => String(message)).filter((message) => message.includes('jailer'));
    expect(warnings).toEqual([expect.stringMatching(/^Firecracker VMs run without a jailer cgroup .*differ per controller/)]);
  });

  it('KILN_VMM_CGROUP=v1 on a host with split groups: CgroupSetupError (the mode promises limits on every VM)', async () => {
    const { cgroups } = cgroupsOn('v1', splitGroups, 'v1');
    await expect(cgroups.jailerParent()).rejects.toThrow(CgroupSetupError);
    await expect(cgroups.jailerParent()).rejects.toThrow(/KILN_VMM_CGROUP=v1 .*differ per controller/);
  });
});

describe('VmCgroups: groups by name (the jailer makes them) and their owners', () => {
  it("names a VM's group vm-<id>", () => {
    expect(vmGroupName('sbx-1')).toBe('vm-sbx-1');
    expect(vmGroupName('sbx-1')).toBe(`${VM_GROUP_PREFIX}sbx-1`);
  });

  it("a late release of an earlier VM leaves the group recorded for its successor's pid; the successor's own release removes it", async () => {
    const { cgroups, backend } = cgroupsOn('v2', unified);
    await cgroups.onModuleInit();
    backend.groups.add('vm-a');
    cgroups.recordGroupOwner('vm-a', 200);
    await cgroups.releaseGroup('vm-a', 100);
    expect(backend.groups.has('vm-a')).toBe(true);
    await cgroups.releaseGroup('vm-a', 200);
    expect(backend.groups.has('vm-a')).toBe(false);
  });

  it('a group with no recorded owner (made before a restart, its VMM gone) is removed by its release', async () => {
    const { cgroups, backend } = cgroupsOn('v2', unified);
    await cgroups.onModuleInit();
    backend.groups.add('vm-b');
    await cgroups.releaseGroup('vm-b', 300);
    expect(backend.groups.has('vm-b')).toBe(false);
  });

  it('release(vmId) and adopted(vmId) are the by-name calls for vm-<id>', async () => {
    const { cgroups, backend } = cgroupsOn('v2', unified);
    await cgroups.onModuleInit();
    backend.groups.add('vm-c');
    cgroups.adopted('c', 400);
    await cgroups.release('c', 399);
    expect(backend.groups.has('vm-c')).toBe(true);
    await cgroups.release('c', 400);
    expect(backend.groups.has('vm-c')).toBe(false);
  });
});
