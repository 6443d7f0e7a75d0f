import 'reflect-metadata';
import { existsSync, mkdirSync, readFileSync, readlinkSync, symlinkSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Module, type INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { ConfigModule, HostAgentEnv, loadConfig } from '@kiln/config';
import { MessagingModule } from '@kiln/messaging';
import { Process } from '@kiln/proto/process';
import { TelemetryModule } from '@kiln/telemetry';
import { eventually, startPrivateNats, type PrivateServer } from '@kiln/testing';
import { CPU_PERIOD_US, VmCgroups } from '../../src/cgroup';
import { hostResourceModules } from '../../src/host-modules';
import { NetworkModule, NetworkSlotPool } from '../../src/network';
import { SandboxManager, type LiveSandbox } from '../../src/sandbox/sandbox-manager.service';
import { SandboxModule } from '../../src/sandbox/sandbox.module';
import { DATA_DIR } from './vm-test-context';

/**
 * Per-VM cgroups with the agent wired as in production (sandbox manager, real VMs) in a data dir of its own that
 * shares the built templates. Names and addresses are private to this suite: prefix ktcgr, 10.231.0.0/24.
 */
const TEST_DATA_DIR = '/var/lib/kiln-test-cgroups';
const PREFIX = 'ktcgr';
const CIDR = '10.231.0.0/24';

interface Agent {
  app: INestApplicationContext;
  manager: SandboxManager;
  cgroups: VmCgroups;
  env: HostAgentEnv;
}

async function startAgent(nats: PrivateServer): Promise<Agent> {
  mkdirSync(TEST_DATA_DIR, { recursive: true });
  for (const shared of ['templates', 'images', 'cache', 'vmm']) {
    const link = join(TEST_DATA_DIR, shared);
    if (!existsSync(link) && existsSync(join(DATA_DIR, shared))) symlinkSync(join(DATA_DIR, shared), link);
  }
  const env = loadConfig(HostAgentEnv, {
    ...process.env,
    NATS_URL: nats.url,
    KILN_DATA_DIR: TEST_DATA_DIR,
    KILN_NETWORK_PREFIX: PREFIX,
    KILN_SLOT_CIDR: CIDR,
    KILN_NETWORK_PREFILL: '1',
    KILN_MAX_SANDBOXES: '4',
    KILN_CLONE_POOL_SIZE: '0',
    KILN_HOST_ID: 'cgroup-test',
    HOST_REGISTRATION_TOKEN: 'cgroup-test-registration',
  });
  @Module({
    imports: [
      ConfigModule.forRoot(HostAgentEnv, env),
      TelemetryModule.forRoot({ service: 'host-agent-test', logLevel: 'warn' }),
      MessagingModule.forRoot({ natsUrl: nats.url, name: 'host-agent-test' }),
      SandboxModule.register(hostResourceModules(env)),
    ],
  })
  class CgroupTestModule {}
  const app = await NestFactory.createApplicationContext(CgroupTestModule, { logger: ['error', 'warn'], abortOnError: false });
  app.enableShutdownHooks();
  return { app, manager: app.get(SandboxManager), cgroups: app.get(VmCgroups), env };
}

async function removeSuiteNetwork(): Promise<void> {
  @Module({ imports: [NetworkModule.register({ namePrefix: PREFIX, slotCidr: CIDR, prefill: 0 })] })
  class NetworkCleanupModule {}
  const app = await NestFactory.createApplicationContext(NetworkCleanupModule, { logger: ['error'] });
  const pool = app.get(NetworkSlotPool);
  await pool.init([]);
  await pool.destroyAll();
  await app.close();
}

async function runInSandbox(live: LiveSandbox, command: string): Promise<string> {
  const headers: Record<string, string> = live.record.envdAccessToken ? { 'X-Access-Token': live.record.envdAccessToken } : {};
  const client = createClient(Process, createConnectTransport({ baseUrl: `http://${live.slot!.hostAddress}:49983`, httpVersion: '1.1', nodeOptions: { agent: live.guestConnections } }));
  let out = '';
  for await (const r of client.start({ process: { cmd: '/bin/bash', args: ['-c', command], envs: {} } }, { headers, timeoutMs: 60_000 })) {
    const e = r.event?.event;
    if (e?.case === 'data' && e.value.output.case === 'stdout') out += Buffer.from(e.value.output.value).toString();
  }
  return out;
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
    await removeSuiteNetwork();
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
