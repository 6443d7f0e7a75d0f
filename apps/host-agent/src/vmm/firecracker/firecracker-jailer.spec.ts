import { VM_GROUP_PREFIX, vmGroupName } from '../../cgroup';
import { buildJailerArgs, jailDirFor, jailerIdFor } from './firecracker-jailer';

describe('jailer command line', () => {
  const input = { jailerId: 'vm-1', firecrackerBinary: '/usr/local/bin/firecracker', uid: 200_007, gid: 200_007, chrootBase: '/srv/jailer' };

  it('runs Firecracker in place with the VM uid/gid, chroot base and API socket', () => {
    expect(buildJailerArgs(input)).toEqual([
      '--id', 'vm-1', '--exec-file', '/usr/local/bin/firecracker', '--uid', '200007', '--gid', '200007', '--chroot-base-dir', '/srv/jailer',
      '--', '--api-sock', '/api.sock',
    ]);
  });

  it('joins the netns and creates the cgroup with the VM limits (v2 and v1 spellings)', () => {
    const limits = { cpuQuotaUs: 250_000, cpuPeriodUs: 100_000, memoryBytes: 384 * 1024 * 1024, pidsMax: 98 };
    expect(buildJailerArgs({ ...input, netnsPath: '/run/netns/kiln-3', cgroup: { version: 'v2', parent: 'kiln-ab', limits } })).toEqual([
      '--id', 'vm-1', '--exec-file', '/usr/local/bin/firecracker', '--uid', '200007', '--gid', '200007', '--chroot-base-dir', '/srv/jailer',
      '--netns', '/run/netns/kiln-3',
      '--cgroup-version', '2', '--parent-cgroup', 'kiln-ab',
      '--cgroup', 'cpu.max=250000 100000', '--cgroup', `memory.max=${384 * 1024 * 1024}`, '--cgroup', 'pids.max=98',
      '--', '--api-sock', '/api.sock',
    ]);
    expect(buildJailerArgs({ ...input, cgroup: { version: 'v1', parent: 'kiln-ab', limits } }).filter((a, i, all) => all[i - 1] === '--cgroup')).toEqual([
      'cpu.cfs_period_us=100000', 'cpu.cfs_quota_us=250000', `memory.limit_in_bytes=${384 * 1024 * 1024}`, 'pids.max=98',
    ]);
  });

  it("maps VM ids to jailer ids that are VmCgroups' group names for the VM (letters, digits, hyphens, at most 64) without collisions", () => {
    expect(jailerIdFor('sbx-abc')).toBe('vm-sbx-abc');
    expect(jailerIdFor('sbx-abc')).toBe(vmGroupName('sbx-abc'));
    const a = jailerIdFor('a_b');
    const b = jailerIdFor('a-b');
    expect(a).toMatch(/^vm-a-b-[0-9a-f]{8}$/);
    expect(b).toBe('vm-a-b');
    expect(a).not.toBe(b);
    // 61 characters fit with the prefix; 62 do not, and get the hash instead of being cut to a neighbour's name.
    expect(jailerIdFor('x'.repeat(61))).toBe(`vm-${'x'.repeat(61)}`);
    const cut = jailerIdFor('x'.repeat(62));
    expect(cut).toMatch(/^vm-x{52}-[0-9a-f]{8}$/);
    expect(cut).not.toBe(jailerIdFor('x'.repeat(63)));
    const long = jailerIdFor(`${'x'.repeat(63)}_`);
    expect(long).toMatch(/^[A-Za-z0-9-]{64}$/);
    for (const id of [a, b, cut, long]) expect(id.startsWith(VM_GROUP_PREFIX)).toBe(true);
  });

  it('puts the jail where the jailer builds it', () => {
    expect(jailDirFor('/srv/jailer', '/usr/local/bin/firecracker', 'vm-1')).toEqual({
      jailDir: '/srv/jailer/firecracker/vm-1',
      rootDir: '/srv/jailer/firecracker/vm-1/root',
    });
  });
});
