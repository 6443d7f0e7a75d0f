import 'reflect-metadata';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { eventually, startPrivateNats, type PrivateServer } from '@kiln/testing';
import { CPU_PERIOD_US, VmCgroups } from '../../src/cgroup';
import { removeSuiteNetwork, runInSandbox, startSandboxAgent, type SandboxAgent } from './sandbox-agent-harness';

/**
 * Per-VM cgroups with the agent wired as in production (sandbox manager, real VMs) in a data dir of its own that
 * shares the built templates. Names and addresses are private to this suite: prefix ktcgr, 10.231.0.0/24.
 */
const TEST_DATA_DIR = '/var/lib/kiln-test-cgroups';
const PREFIX = 'ktcgr';
const CIDR = '10.231.0.0/24';

const SUITE = { dataDir: TEST_DATA_DIR, prefix: PREFIX, cidr: CIDR, hostId: 'cgroups-test' };

type Agent = SandboxAgent & { cgroups: VmCgroups };

async function startAgent(nats: PrivateServer): Promise<Agent> {
  const agent = await startSandboxAgent(SUITE, nats);
  return { ...agent, cgroups: agent.app.get(VmCgroups) };
}

/** The group a process is in for one controller, from /proc/<pid>/cgroup (v1 "n:cpu,...:path", else v2 "0::path"). */
function groupOf(pid: number, controller: string): string | undefined {
  const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8')
    .split('\n')
    .map((line) => /^\d+:([^:]*):(.*)$/.exec(line))
    .filter((match): match is RegExpExecArray => match !== null);
  return (lines.find((match) => match[1]!.split(',').includes(controller)) ?? lines.find((match) => match[1] === ''))?.[2];
}

/** The group is removed by the driver once the VMM process is gone, just after the destroy returns. */
const groupsGone = (paths: string[]) => eventually('the VM cgroup to be removed', () => paths.every((dir) => !existsSync(dir)), { timeoutMs: 10_000, intervalMs: 20 });

describe('per-VM cgroups (real VMs)', () => {
  let nats: PrivateServer;
  let agent: Agent | undefined;

  beforeAll(async () => {
    nats = await startPrivateNats();
    await rm(join(TEST_DATA_DIR, 'sandboxes'), { recursive: true, force: true });
    agent = await startAgent(nats);
  });

  afterAll(async () => {
    // The suite's parent group (kiln-ktcgr) goes once its VMs have: as the agent's teardown does.
    expect(await agent?.cgroups.removeAll()).not.toBe(false);
    await agent?.app.close();
    await nats?.stop();
    await removeSuiteNetwork(SUITE);
  });

  it("a sandbox's VMM runs in its own group with cpu, memory and pids limits from the VM; the group goes with it", async () => {
    const version = await agent!.cgroups.version();
    expect(['v2', 'v1']).toContain(version);
    const buildId = readlinkSync(join(TEST_DATA_DIR, 'templates', 'base', 'current'));
    const live = await agent!.manager.create({
      sandboxId: 'slcg1',
      templateId: 'base',
      buildId,
      teamId: 'cgroups',
      envVars: {},
      metadata: {},
      envdAccessToken: 'token-slcg1',
    });
    const vm = live.vm!;
    let paths: string[] = [];
    try {
      paths = await agent!.cgroups.paths(vm.id);
      expect(paths.length).toBeGreaterThan(0);
      // The kernel's view of the QEMU process: in <parent kiln-ktcgr>/vm-<vm id> for each controller.
      for (const controller of ['cpu', 'memory', 'pids']) {
        expect(groupOf(vm.pid, controller)).toMatch(new RegExp(`/kiln-${PREFIX}/vm-${vm.id}$`));
      }
      expect(await agent!.cgroups.processesOf(vm.id)).toEqual([vm.pid]);

      const { vcpus, memoryMib, accelerator } = vm.spec;
      const overheadMib = agent!.env.KILN_VMM_CGROUP_MEMORY_OVERHEAD_MIB + (accelerator === 'tcg' ? agent!.env.KILN_VMM_TCG_TB_MIB : 0);
      expect(await agent!.cgroups.limitsOf(vm.id)).toEqual({
        cpuQuotaUs: ((vcpus * 100 + agent!.env.KILN_VMM_CGROUP_CPU_HEADROOM_PERCENT) * CPU_PERIOD_US) / 100,
        cpuPeriodUs: CPU_PERIOD_US,
        memoryBytes: (memoryMib + overheadMib) * 1024 * 1024,
        pidsMax: vcpus + agent!.env.KILN_VMM_CGROUP_PIDS_MARGIN,
      });
      // The guest works under the limits: a command runs and uses most of its RAM without the VMM being killed.
      expect(await runInSandbox(live, `head -c ${memoryMib - 160}M /dev/zero | tail | wc -c`)).toBe(`${(memoryMib - 160) * 1024 * 1024}\n`);
      expect(await runInSandbox(live, 'echo alive')).toBe('alive\n');
      if (version === 'v1') {
        const memoryDir = paths.find((dir) => existsSync(join(dir, 'memory.max_usage_in_bytes')))!;
        const peakMib = Number(readFileSync(join(memoryDir, 'memory.max_usage_in_bytes'), 'utf8')) / 2 ** 20;
        const threads = readFileSync(`/proc/${vm.pid}/status`, 'utf8').match(/^Threads:\s+(\d+)/m)?.[1];
        console.log(`VMM ${vm.pid}: peak charged memory ${peakMib.toFixed(0)} MiB for ${memoryMib} MiB guest RAM; ${threads} threads`);
      }
    } finally {
      await agent!.manager.destroy('slcg1');
    }
    await groupsGone(paths);
  });

  it('a restarted agent keeps the group of a live VM it adopts and removes it when that VM is destroyed', async () => {
    const buildId = readlinkSync(join(TEST_DATA_DIR, 'templates', 'base', 'current'));
    const live = await agent!.manager.create({ sandboxId: 'slcg2', templateId: 'base', buildId, teamId: 'cgroups', envVars: {}, metadata: {}, envdAccessToken: 't' });
    const { id, pid } = live.vm!;
    const paths = await agent!.cgroups.paths(id);
    // Sandboxes outlive the agent; its start-up reconciliation must not touch their groups.
    await agent!.app.close();
    agent = undefined;
    agent = await startAgent(nats);
    try {
      expect(agent.manager.get('slcg2')?.vm?.pid).toBe(pid);
      for (const dir of paths) expect(existsSync(dir)).toBe(true);
      expect(await agent.cgroups.processesOf(id)).toEqual([pid]);
    } finally {
      await agent.manager.destroy('slcg2');
    }
    await groupsGone(paths);
  });
});
