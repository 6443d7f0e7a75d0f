import { parseMountinfo, parseProcCgroup, v1Usable, v2Usable } from './cgroup-detect';
import { CgroupUnavailableError } from './cgroup.errors';
import { VmCgroupsConfig } from './vm-cgroups.config';
import { selectBackend } from './vm-cgroups.service';

const HYBRID_MOUNTINFO = [
  '30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
  '31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct',
  '34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory',
  '38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids',
  '39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd',
  '40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw',
].join('\n');

describe('cgroup detection', () => {
  it('reads v1 hierarchies (co-mounted cpu,cpuacct) and the cgroup2 mount of a hybrid host', () => {
    expect(parseMountinfo(HYBRID_MOUNTINFO)).toEqual({
      cgroup2: ['/sys/fs/cgroup/unified'],
      v1: { cpu: '/sys/fs/cgroup/cpu,cpuacct', memory: '/sys/fs/cgroup/memory', pids: '/sys/fs/cgroup/pids' },
    });
  });

  it("reads the process's own v1 groups", () => {
    expect(parseProcCgroup('4:memory:/agent/x\n2:cpu,cpuacct:/\n8:pids:/\n0::/\n')).toEqual({ memory: '/agent/x', cpu: '/', pids: '/' });
  });

  const hybrid = {
    v2: { mountPath: '/sys/fs/cgroup/unified', controllers: [] },
    v1Mounts: { cpu: '/sys/fs/cgroup/cpu', memory: '/sys/fs/cgroup/memory', pids: '/sys/fs/cgroup/pids' },
    v1OwnPaths: { cpu: '/', memory: '/agent/x', pids: '/' },
  };
  const unified = { v2: { mountPath: '/sys/fs/cgroup', controllers: ['cpu', 'io', 'memory', 'pids'] }, v1Mounts: {}, v1OwnPaths: {} };
  const config = (mode: 'auto' | 'v2' | 'v1' | 'off') => new VmCgroupsConfig(mode, 'kiln-kiln', 128, 128, 96);

  it('auto prefers v2 with controllers, falls back to v1 nested in the agent’s own groups', () => {
    expect(v2Usable(unified)).toBe(true);
    expect(v2Usable(hybrid)).toBe(false);
    expect(v1Usable(hybrid)).toBe(true);
    expect(selectBackend(config('auto'), unified)?.parentPaths).toEqual(['/sys/fs/cgroup/kiln-kiln']);
    const v1 = selectBackend(config('auto'), hybrid);
    expect(v1?.version).toBe('v1');
    expect(v1?.parentPaths).toEqual([
      '/sys/fs/cgroup/cpu/kiln-kiln',
      '/sys/fs/cgroup/memory/agent/x/kiln-kiln',
      '/sys/fs/cgroup/pids/kiln-kiln',
    ]);
  });

  it('off never limits; an explicit version the host lacks is an error, auto without any is off', () => {
    expect(selectBackend(config('off'), unified)).toBeUndefined();
    expect(() => selectBackend(config('v2'), hybrid)).toThrow(CgroupUnavailableError);
    expect(() => selectBackend(config('v1'), unified)).toThrow(CgroupUnavailableError);
    expect(selectBackend(config('auto'), { v1Mounts: {}, v1OwnPaths: {} })).toBeUndefined();
  });
});
