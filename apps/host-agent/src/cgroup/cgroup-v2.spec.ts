import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CgroupV2 } from './cgroup-v2';
import { CgroupUnavailableError } from './cgroup.errors';
import { VmCgroupsConfig } from './vm-cgroups.config';
import { CPU_PERIOD_US, VmCgroups } from './vm-cgroups.service';

/**
 * This host's cgroup2 mount has no controllers (they are bound to v1), so the v2 backend is checked against a
 * temporary directory standing in for a cgroup2 mount: the files it writes are the kernel's interface files. On a
 * real cgroupfs rmdir drops a group with its interface files; here the stand-in removes the directory recursively.
 */
describe('CgroupV2 against a temporary directory standing in for a cgroup2 mount', () => {
  let mount: string;
  let sleeper: ChildProcess | undefined;
  const standIn = (parent: string) => new CgroupV2(mount, parent, { removeDir: (path) => rm(path, { recursive: true }) });
  const config = (parent: string) => new VmCgroupsConfig('v2', parent, 100, 128, 96, 50);

  beforeEach(async () => {
    mount = await mkdtemp(join(tmpdir(), 'kiln-cgroup2-'));
    await writeFile(join(mount, 'cgroup.controllers'), 'cpuset cpu io memory hugetlb pids rdma misc\n');
    await writeFile(join(mount, 'cgroup.subtree_control'), 'memory\n');
  });

  afterEach(async () => {
    sleeper?.kill('SIGKILL');
    sleeper = undefined;
    await rm(mount, { recursive: true, force: true });
  });

  it('delegates cpu, memory and pids from the mount down to a nested parent', async () => {
    await standIn('kiln.slice/kiln-ktv2').ensureParent();
    // memory was already on at the root: only the missing controllers are asked for.
    expect(await readFile(join(mount, 'cgroup.subtree_control'), 'utf8')).toBe('+cpu +pids');
    expect(await readFile(join(mount, 'kiln.slice', 'cgroup.subtree_control'), 'utf8')).toBe('+cpu +memory +pids');
    expect(await readFile(join(mount, 'kiln.slice', 'kiln-ktv2', 'cgroup.subtree_control'), 'utf8')).toBe('+cpu +memory +pids');
  });

  it('refuses a cgroup2 mount without the controllers (a hybrid host)', async () => {
    await writeFile(join(mount, 'cgroup.controllers'), '\n');
    await expect(standIn('kiln-ktv2').ensureParent()).rejects.toBeInstanceOf(CgroupUnavailableError);
  });

  it('writes cpu.max, memory.max and pids.max from the VM and puts the VMM pid in cgroup.procs', async () => {
    const cgroups = new VmCgroups(config('kiln-ktv2'), standIn('kiln-ktv2'));
    expect(await cgroups.version()).toBe('v2');
    const placement = await cgroups.prepare('sbx-1', { vcpus: 2, memoryMib: 512, accelerator: 'tcg' });
    const dir = join(mount, 'kiln-ktv2', 'vm-sbx-1');
    expect(await cgroups.paths('sbx-1')).toEqual([dir]);
    expect(await readFile(join(dir, 'cpu.max'), 'utf8')).toBe(`${2.5 * CPU_PERIOD_US} ${CPU_PERIOD_US}`); // 2 vCPUs + 50 % of a CPU for QEMU's own threads
    // Guest RAM + overhead (100) + the TCG translation buffer (128).
    expect(await readFile(join(dir, 'memory.max'), 'utf8')).toBe(String((512 + 100 + 128) * 1024 * 1024));
    expect(await readFile(join(dir, 'pids.max'), 'utf8')).toBe(String(2 + 96));
    expect(await cgroups.limitsOf('sbx-1')).toEqual({
      cpuQuotaUs: 250_000,
      cpuPeriodUs: 100_000,
      memoryBytes: 740 * 1024 * 1024,
      pidsMax: 98,
    });

    sleeper = spawn('sleep', ['60']);
    placement!.enterSync(sleeper.pid!);
    expect(await cgroups.processesOf('sbx-1')).toEqual([sleeper.pid]);

    // The VMM exits: release kills what is left in the group (the stand-in still lists the pid) and removes it.
    const exited = new Promise((resolve) => sleeper!.once('exit', resolve));
    await cgroups.release('sbx-1', sleeper.pid);
    await exited;
    expect(sleeper.signalCode).toBe('SIGKILL');
    await expect(readFile(join(dir, 'cpu.max'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('with KVM the memory limit has no translation buffer', async () => {
    const cgroups = new VmCgroups(config('kiln-ktv2'), standIn('kiln-ktv2'));
    expect(cgroups.limitsFor({ vcpus: 1, memoryMib: 256, accelerator: 'kvm' }).memoryBytes).toBe((256 + 100) * 1024 * 1024);
  });

  it('a late release of an earlier VM of the same id leaves the new group alone', async () => {
    const cgroups = new VmCgroups(config('kiln-ktv2'), standIn('kiln-ktv2'));
    const placement = await cgroups.prepare('sbx-2', { vcpus: 1, memoryMib: 256, accelerator: 'tcg' });
    placement!.enterSync(4242);
    await cgroups.release('sbx-2', 4141);
    expect(await cgroups.processesOf('sbx-2')).toEqual([4242]);
  });

  it('reconciliation removes empty leftover groups and keeps busy ones (adopted live VMs)', async () => {
    const parent = join(mount, 'kiln-ktv2');
    await mkdir(join(parent, 'vm-dead'), { recursive: true });
    await writeFile(join(parent, 'vm-dead', 'cgroup.procs'), '');
    await mkdir(join(parent, 'vm-live'), { recursive: true });
    await writeFile(join(parent, 'vm-live', 'cgroup.procs'), `${process.pid}\n`);
    // Not a VM group: never touched.
    await mkdir(join(parent, 'other'), { recursive: true });

    const cgroups = new VmCgroups(config('kiln-ktv2'), standIn('kiln-ktv2'));
    await cgroups.onModuleInit();
    // Made a moment ago: possibly another process's VM being set up, so start-up leaves it.
    expect(await cgroups.reconcile()).toEqual({ removed: [], kept: expect.arrayContaining(['vm-dead', 'vm-live']) });
    // Old enough (here: any age): the empty one goes, the busy one stays.
    expect(await cgroups.reconcile(0)).toEqual({ removed: ['vm-dead'], kept: ['vm-live'] });
    expect(await cgroups.processesOf('live')).toEqual([process.pid]);
    await expect(readFile(join(parent, 'vm-dead', 'cgroup.procs'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
