import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { detectCgroupHost } from '../../src/cgroup/cgroup-detect';
import { VmCgroupsConfig } from '../../src/cgroup/vm-cgroups.config';
import { CPU_PERIOD_US, VmCgroups } from '../../src/cgroup/vm-cgroups.service';

jest.setTimeout(60_000);

/**
 * The v1 backend on this host's real cgroup v1 hierarchies (cpu, memory, pids), in a parent private to this file.
 * Skipped on a host without them (a pure cgroup v2 host is covered by cgroup-v2.spec.ts).
 */
const PARENT = 'kiln-ktcg';
const config = new VmCgroupsConfig('v1', PARENT, 16, 128, 16, 25);

async function v1Available(): Promise<boolean> {
  const host = await detectCgroupHost();
  return ['cpu', 'memory', 'pids'].every((controller) => host.v1Mounts[controller as 'cpu'] !== undefined);
}

function run(command: string, args: string[]): ChildProcess {
  return spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
}

function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, stderr })));
}

async function exitAfterKill(child: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

/** Runs `script` in bash inside the group: bash is paused by SIGSTOP until it has been moved in. */
async function runInGroup(cgroups: VmCgroups, vmId: string, script: string) {
  const placement = await cgroups.prepare(vmId, { vcpus: 1, memoryMib: 64, accelerator: 'kvm' });
  // bash stops itself, is moved in, then continued: nothing of the script runs outside the group.
  const child = run('bash', ['-c', `kill -STOP $$; ${script}`]);
  const exit = exitOf(child);
  for (let i = 0; i < 500 && !(await readFile(`/proc/${child.pid}/stat`, 'utf8')).includes(') T '); i++) await new Promise((r) => setTimeout(r, 10));
  placement!.enterSync(child.pid!);
  child.kill('SIGCONT');
  return { child, exit: await exit };
}

describe('CgroupV1 on this host (real cgroup v1 hierarchies)', () => {
  let cgroups: VmCgroups;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    if (!(await v1Available())) return;
    cgroups = new VmCgroups(config);
    await cgroups.onModuleInit();
  });

  afterAll(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) await exitAfterKill(child);
    // Whatever a failed test left: empty groups and this file's parent.
    await cgroups?.removeAll();
  });

  it('puts a process in its own group with the cpu, memory and pids limits, and removes the group after it', async () => {
    if (!cgroups) return console.warn('no cgroup v1 cpu/memory/pids hierarchies here: skipped');
    expect(await cgroups.version()).toBe('v1');
    const placement = await cgroups.prepare('sleeper', { vcpus: 2, memoryMib: 256, accelerator: 'tcg' });
    const sleeper = run('sleep', ['60']);
    children.push(sleeper);
    placement!.enterSync(sleeper.pid!);

    const own = await readFile(`/proc/${sleeper.pid}/cgroup`, 'utf8');
    for (const controller of ['cpu', 'memory', 'pids']) {
      expect(own).toMatch(new RegExp(`^\\d+:[^:]*\\b${controller}\\b[^:]*:.*/${PARENT}/vm-sleeper$`, 'm'));
    }
    const paths = await cgroups.paths('sleeper');
    expect(paths).toHaveLength(3);
    const [cpuDir, memoryDir, pidsDir] = paths as [string, string, string];
    expect(await readFile(join(cpuDir, 'cpu.cfs_quota_us'), 'utf8')).toBe(`${2.25 * CPU_PERIOD_US}\n`); // 2 vCPUs + 25 % of a CPU for QEMU's own threads
    expect(await readFile(join(cpuDir, 'cpu.cfs_period_us'), 'utf8')).toBe(`${CPU_PERIOD_US}\n`);
    // Guest RAM + overhead 16 + translation buffer 128 (TCG).
    expect(await readFile(join(memoryDir, 'memory.limit_in_bytes'), 'utf8')).toBe(`${(256 + 16 + 128) * 1024 * 1024}\n`);
    expect(await readFile(join(pidsDir, 'pids.max'), 'utf8')).toBe(`${2 + 16}\n`);
    expect(await cgroups.processesOf('sleeper')).toEqual([sleeper.pid]);

    const exited = exitOf(sleeper);
    sleeper.kill('SIGKILL');
    await exited;
    await cgroups.release('sleeper', sleeper.pid);
    for (const dir of paths) expect(existsSync(dir)).toBe(false);
  });

  it('the pids limit stops a fork loop in the group; the same loop outside it completes (control)', async () => {
    if (!cgroups) return;
    // pids.max = 1 vCPU + 16. Each `sleep` is a task; bash itself is one.
    const loop = 'for i in $(seq 40); do sleep 5 & done; kill $(jobs -p) 2>/dev/null; wait';
    const inside = await runInGroup(cgroups, 'pids', loop);
    expect(inside.exit.stderr).toMatch(/fork: (retry: )?Resource temporarily unavailable/);
    const outside = await exitOf(run('bash', ['-c', loop]));
    expect(outside.stderr).not.toMatch(/Resource temporarily unavailable/);
  });

  it('the memory limit OOM-kills a hog in the group; a small allocation in the same group succeeds (control)', async () => {
    if (!cgroups) return;
    // memory.limit = 64 + 16 MiB (KVM: no translation buffer). tail keeps /dev/zero's one endless "line" in memory.
    expect(cgroups.limitsFor({ vcpus: 1, memoryMib: 64, accelerator: 'kvm' }).memoryBytes).toBe(80 * 1024 * 1024);
    const small = await runInGroup(cgroups, 'memory', 'head -c 20M /dev/zero | tail | wc -c');
    expect(small.exit.code).toBe(0);
    await cgroups.release('memory', small.child.pid);
    const hog = await runInGroup(cgroups, 'memory', 'head -c 400M /dev/zero | tail | wc -c; exit ${PIPESTATUS[1]}');
    // tail was killed by the OOM killer (128 + SIGKILL).
    expect(hog.exit.code).toBe(137);
  });

  it('host teardown removes the empty VM groups and the parent, and keeps a busy one', async () => {
    if (!cgroups) return;
    const busy = await cgroups.prepare('busy', { vcpus: 1, memoryMib: 64, accelerator: 'kvm' });
    const sleeper = run('sleep', ['60']);
    children.push(sleeper);
    busy!.enterSync(sleeper.pid!);
    await cgroups.prepare('idle', { vcpus: 1, memoryMib: 64, accelerator: 'kvm' });
    const parents = (await cgroups.paths('busy')).map((dir) => dirname(dir));

    expect(await cgroups.removeAll()).toBe(false);
    for (const dir of await cgroups.paths('idle')) expect(existsSync(dir)).toBe(false);
    expect(await cgroups.processesOf('busy')).toEqual([sleeper.pid]);

    await cgroups.release('busy', sleeper.pid);
    expect(await cgroups.removeAll()).toBe(true);
    for (const dir of parents) expect(existsSync(dir)).toBe(false);
  });

  it('reconciliation removes an empty leftover group and keeps a busy one', async () => {
    if (!cgroups) return;
    const busy = await cgroups.prepare('busy', { vcpus: 1, memoryMib: 64, accelerator: 'kvm' });
    const sleeper = run('sleep', ['60']);
    children.push(sleeper);
    busy!.enterSync(sleeper.pid!);
    const leftovers = (await cgroups.paths('leftover')) as string[];
    for (const dir of leftovers) await mkdir(dir, { recursive: true });

    expect(leftovers.every((dir) => existsSync(dir))).toBe(true);

    const restarted = new VmCgroups(config);
    await restarted.onModuleInit();
    // Made a moment ago, so start-up keeps it (another process may be about to move a VMM in); older, it goes.
    expect(leftovers.every((dir) => existsSync(dir))).toBe(true);
    const reconciled = await restarted.reconcile(0);
    expect(reconciled.removed).toContain('vm-leftover');
    expect(reconciled.kept).toContain('vm-busy');
    for (const dir of leftovers) expect(existsSync(dir)).toBe(false);
    expect(await restarted.processesOf('busy')).toEqual([sleeper.pid]);

    // Its VMM gone, the group goes with what is left in it.
    await restarted.release('busy', sleeper.pid);
    for (const dir of await restarted.paths('busy')) expect(existsSync(dir)).toBe(false);
  });
});
