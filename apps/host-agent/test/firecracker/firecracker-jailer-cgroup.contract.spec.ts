import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Logger } from '@nestjs/common';
import { parsePids } from '../../src/cgroup/cgroup-backend';
import { detectCgroupHost, parseMountinfo, parseProcCgroup, v1Usable, v2Usable, type CgroupHost } from '../../src/cgroup/cgroup-detect';
import { VmCgroupsConfig } from '../../src/cgroup/vm-cgroups.config';
import { VmCgroups, vmGroupName } from '../../src/cgroup/vm-cgroups.service';
import { FirecrackerDriver } from '../../src/vmm/firecracker/firecracker.driver';
import { buildJailerArgs, jailerIdFor } from '../../src/vmm/firecracker/firecracker-jailer';
import { UffdWorkerSupervisor } from '../../src/vmm/uffd';
import { processStartTicks } from '../../src/vmm/vmm-identities';
import { VmmConfig } from '../../src/vmm/vmm.config';
import type { VmHandle, VmSpec } from '../../src/vmm/vmm-driver';
import { fakeVmSpec } from './fake-vm-spec';

jest.setTimeout(60_000);

const FAKE_FIRECRACKER = join(__dirname, 'fake-firecracker.cjs');
const FAKE_JAILER = join(__dirname, 'fake-jailer.cjs');
const V1_CONTROLLERS = ['cpu', 'memory', 'pids'] as const;
/** Private to this file and process: afterAll removes it (VmCgroups.removeAll). */
const PARENT = `kiln-fc-contract-${process.pid}`;
/**
 * The agent's default pids margin (KILN_VMM_CGROUP_PIDS_MARGIN): the fake VMM is a node process with a dozen
 * threads, which a margin of a few tasks would stop from starting its thread pool.
 */
const cgroupsConfig = (parent: string) => new VmCgroupsConfig('auto', parent, 64, 0, 96);

/**
 * Read synchronously, because whether the block runs must be known when it is declared: a usable version, and the
 * agent's (this worker's) own v1 groups, which decide whether the jailer can reach VmCgroups' v1 parent at all.
 */
function probeThisHost(): { usable: boolean; v1GroupsDiffer: boolean } {
  const mounts = parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8'));
  const own = parseProcCgroup(readFileSync('/proc/self/cgroup', 'utf8'));
  const v2 = mounts.cgroup2.some((mount) => {
    const controllers = (() => {
      try {
        return readFileSync(join(mount, 'cgroup.controllers'), 'utf8').split(/\s+/);
      } catch {
        return [];
      }
    })();
    return V1_CONTROLLERS.every((controller) => controllers.includes(controller));
  });
  const v1 = V1_CONTROLLERS.every((controller) => mounts.v1[controller] !== undefined);
  const root = process.getuid?.() === 0;
  return { usable: root && (v2 || v1), v1GroupsDiffer: !v2 && v1 && new Set(V1_CONTROLLERS.map((c) => own[c] ?? '/')).size > 1 };
}

const probe = probeThisHost();
const describeOnCgroups = probe.usable ? describe : describe.skip;
const suiteName = probe.usable
  ? "contract: FirecrackerDriver's jailer cgroup is VmCgroups' group for the VM, on this machine's real cgroups (fake jailer creating it as v1.16.1's does)"
  : 'contract: FirecrackerDriver jailer cgroups (SKIPPED: neither cgroup v2 with cpu/memory/pids nor v1 cpu/memory/pids hierarchies are usable here as root)';

interface JailerRecord {
  who: 'jailer' | 'firecracker';
  argv?: string[];
  pid?: number;
  cgroupDirs?: string[];
}

describeOnCgroups(suiteName, () => {
  let base: string;
  let chrootBase: string;
  let vmmConfig: VmmConfig;
  let supervisor: UffdWorkerSupervisor;
  let host: CgroupHost;
  let version: 'v2' | 'v1';
  let vmCgroups: VmCgroups;
  let driver: FirecrackerDriver;
  const config = cgroupsConfig(PARENT);
  /** Every VmCgroups of the file (agents, restarted agents): afterAll removes their parents. */
  const agents: VmCgroups[] = [];
  const handles: VmHandle[] = [];
  const children: ChildProcess[] = [];
  let counter = 0;

  /** An agent's VmCgroups: on the layout the cases use, or (ownLayout) on what this worker's /proc/self says. */
  function agent(options: { config?: VmCgroupsConfig; ownLayout?: boolean } = {}): VmCgroups {
    const cgroups = new VmCgroups(options.config ?? config, undefined, options.ownLayout ? undefined : host);
    agents.push(cgroups);
    return cgroups;
  }

  beforeAll(async () => {
    // Short: the API socket path (<base>/j/fake-firecracker.cjs/<id>/root/api.sock) must fit a unix socket address.
    base = await mkdtemp(join(tmpdir(), 'fcg-'));
    chrootBase = join(base, 'j');
    await mkdir(chrootBase);
    // An uncompressed ELF64 header is all the driver reads of the kernel (the fake boots nothing).
    await writeFile(join(base, 'vmlinux'), Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01]), Buffer.alloc(64)]));
    vmmConfig = new VmmConfig(base, 'qemu-system-x86_64', 'kvm', 128, 1000, undefined, 'firecracker', {
      binary: FAKE_FIRECRACKER,
      jailerBinary: FAKE_JAILER,
      kernelPath: join(base, 'vmlinux'),
      chrootBase,
    });
    supervisor = new UffdWorkerSupervisor(vmmConfig.uffdWorkerBinary);
    const detected = await detectCgroupHost();
    version = v2Usable(detected) ? 'v2' : 'v1';
    expect(version === 'v2' || v1Usable(detected)).toBe(true);
    // The jailer takes one parent for every v1 controller, so with this worker in different groups per controller
    // (this machine: its own memory group, the root elsewhere) VmCgroups refuses it a parent; the last case checks
    // that. The others stand in for an agent sitting in the root group of every hierarchy, where it can.
    host = probe.v1GroupsDiffer ? { ...detected, v1OwnPaths: { cpu: '/', memory: '/', pids: '/' } } : detected;
    vmCgroups = agent();
    await vmCgroups.onModuleInit();
    driver = new FirecrackerDriver(vmmConfig, supervisor, vmCgroups);
  });

  afterEach(async () => {
    jest.restoreAllMocks();
    for (const handle of handles.splice(0)) await handle.kill().catch(() => undefined);
    for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });

  afterAll(async () => {
    // Empty groups a failed case left, then the parents: nothing of this file stays in the cgroup filesystem.
    for (const cgroups of agents) await cgroups.removeAll().catch(() => false);
    // removeAll takes only vm-… groups: a failing run's groups of other names (a jailer id without the prefix) too.
    for (const cgroups of agents) {
      for (const parentDir of (await cgroups.paths('any')).map((dir) => dirname(dir))) {
        const leftovers = await readdir(parentDir, { withFileTypes: true }).catch(() => []);
        for (const entry of leftovers) if (entry.isDirectory()) await rmdir(join(parentDir, entry.name)).catch(() => undefined);
        await rmdir(parentDir).catch(() => undefined);
      }
    }
    await rm(base, { recursive: true, force: true });
  });

  async function newSpec(): Promise<VmSpec> {
    return fakeVmSpec(base, `cg-${++counter}`);
  }


  async function jailerRecord(vmId: string): Promise<JailerRecord> {
    const text = await readFile(join(chrootBase, 'records', `${jailerIdFor(vmId)}.jsonl`), 'utf8');
    return text
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as JailerRecord)
      .find((record) => record.who === 'jailer')!;
  }

  async function track<T extends VmHandle>(promise: Promise<T>): Promise<T> {
    const handle = await promise;
    handles.push(handle);
    return handle;
  }

  const allExist = (dirs: string[]) => dirs.length > 0 && dirs.every((dir) => existsSync(dir));
  const noneExist = (dirs: string[]) => dirs.every((dir) => !existsSync(dir));

  it("(a) control: while the VM runs, the jailer's group is VmCgroups' group for it in every hierarchy, holding the VMM, with the VM's limits", async () => {
    const spec = await newSpec();
    const vm = await track(driver.spawn(spec));
    const jailerId = jailerIdFor(spec.id);
    expect(jailerId).toBe(vmGroupName(spec.id));
    const parent = await vmCgroups.jailerParent();
    expect(parent).toBe(PARENT);
    const record = await jailerRecord(spec.id);
    expect(record.argv).toEqual(expect.arrayContaining(['--cgroup-version', version === 'v2' ? '2' : '1', '--parent-cgroup', PARENT]));

    const paths = await vmCgroups.paths(spec.id);
    expect(paths).toHaveLength(version === 'v2' ? 1 : new Set(V1_CONTROLLERS.map((c) => host.v1Mounts[c])).size);
    // The fake made exactly the directories VmCgroups reports: <mount>/<parent>/<jailer id> is <VmCgroups' parent>/vm-<id>.
    expect([...(record.cgroupDirs ?? [])].sort()).toEqual([...paths].sort());
    expect(allExist(paths)).toBe(true);
    for (const dir of paths) expect(parsePids(await readFile(join(dir, 'cgroup.procs'), 'utf8'))).toEqual([vm.pid]);
    expect(await vmCgroups.processesOf(spec.id)).toEqual([vm.pid]);
    expect(await vmCgroups.limitsOf(spec.id)).toEqual(vmCgroups.limitsFor({ vcpus: 2, memoryMib: 256, accelerator: 'kvm' }));
    // The kernel's own view of the VMM process, per controller.
    const own = parseProcCgroup(await readFile(`/proc/${vm.pid}/cgroup`, 'utf8'));
    const unified = (await readFile(`/proc/${vm.pid}/cgroup`, 'utf8')).match(/^0::(.*)$/m)?.[1];
    for (const controller of V1_CONTROLLERS) expect(version === 'v2' ? unified : own[controller]).toMatch(new RegExp(`/${PARENT}/${jailerId}$`));
  });

  it('(b) kill: once the VMM is gone its group is removed from every hierarchy', async () => {
    const spec = await newSpec();
    const vm = await track(driver.spawn(spec));
    const paths = await vmCgroups.paths(spec.id);
    expect(allExist(paths)).toBe(true);
    await vm.kill();
    await waitFor(() => noneExist(paths));
    expect(await vmCgroups.processesOf(spec.id)).toEqual([]);
  });

  it('(c) a VM adopted by a restarted agent and then killed from outside: that agent removes its group', async () => {
    const spec = await newSpec();
    const firstAgent = agent();
    const firstDriver = new FirecrackerDriver(vmmConfig, supervisor, firstAgent);
    // The first agent is "gone" once it detaches; its process still holds the VMM as a child, so its exit handling
    // would run here too: stubbed, so what removes the group can only be the restarted agent.
    jest.spyOn(firstAgent, 'releaseGroup').mockResolvedValue(undefined);
    const vm = await track(firstDriver.spawn(spec));
    vm.detach();
    const paths = await vmCgroups.paths(spec.id);
    expect(allExist(paths)).toBe(true);

    const restarted = agent();
    await restarted.onModuleInit();
    const releases = jest.spyOn(restarted, 'releaseGroup');
    const adopted = await new FirecrackerDriver(vmmConfig, supervisor, restarted).adopt(spec.stateDir);
    expect(adopted.pid).toBe(vm.pid);
    expect(await restarted.processesOf(spec.id)).toEqual([vm.pid]);
    process.kill(vm.pid, 'SIGKILL');
    expect((await adopted.exited).reason).toBe('process-gone');
    await waitFor(() => noneExist(paths));
    expect(releases).toHaveBeenCalledWith(jailerIdFor(spec.id), vm.pid);
    expect(await processStartTicks(vm.pid)).toBeUndefined();
  });

  it('(d) an empty group left by a jailer that died while no agent ran is removed by start-up reconciliation', async () => {
    const vmId = `left-${++counter}`;
    const jailerId = jailerIdFor(vmId);
    const parent = await vmCgroups.jailerParent();
    const args = buildJailerArgs({
      jailerId,
      firecrackerBinary: FAKE_FIRECRACKER,
      uid: 0,
      gid: 0,
      chrootBase,
      cgroup: { version, parent: parent!, limits: vmCgroups.limitsFor({ vcpus: 1, memoryMib: 128, accelerator: 'kvm' }) },
    });
    // Started without any driver: nothing in this process knows of it or will release its group.
    const jailer = spawn(process.execPath, [FAKE_JAILER, ...args], { stdio: 'ignore' });
    children.push(jailer);
    const exited = new Promise((resolve) => jailer.once('exit', resolve));
    const paths = await vmCgroups.paths(vmId);
    await waitFor(async () => (await vmCgroups.processesOf(vmId)).includes(jailer.pid!));
    jailer.kill('SIGKILL');
    await exited;
    expect(allExist(paths)).toBe(true);
    expect(await vmCgroups.processesOf(vmId)).toEqual([]);

    const restarted = agent();
    await restarted.onModuleInit();
    // Start-up keeps a group this young (another process may be about to move a VMM in); older, it goes.
    expect(allExist(paths)).toBe(true);
    const { removed } = await restarted.reconcile(0);
    expect(removed).toContain(jailerId);
    expect(noneExist(paths)).toBe(true);
  });

  (probe.v1GroupsDiffer ? it : it.skip)(
    "this machine's own layout (v1, this worker in different groups per controller): no jailer parent, a warning, and VMs start without a jailer cgroup",
    async () => {
      const ownConfig = cgroupsConfig(`${PARENT}-own`);
      const ownLayout = agent({ config: ownConfig, ownLayout: true });
      await ownLayout.onModuleInit();
      expect(await ownLayout.version()).toBe('v1');
      const warn = jest.spyOn(Logger.prototype, 'warn');
      expect(await ownLayout.jailerParent()).toBeUndefined();
      expect(warn).toHaveBeenCalledWith(expect.stringMatching(/^Firecracker VMs run without a jailer cgroup .*differ per controller/));
      const spec = await newSpec();
      const vm = await track(new FirecrackerDriver(vmmConfig, supervisor, ownLayout).spawn(spec));
      const record = await jailerRecord(spec.id);
      expect(record.argv).not.toContain('--cgroup-version');
      expect(record.argv).not.toContain('--cgroup');
      expect(record.cgroupDirs).toEqual([]);
      expect(noneExist(await ownLayout.paths(spec.id))).toBe(true);
      expect(await vm.state()).toBe('running');
    },
  );
});

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
