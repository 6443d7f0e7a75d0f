import 'reflect-metadata';
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { type INestApplicationContext } from '@nestjs/common';
import { HostAgentEnv } from '@kiln/config';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { sandboxEventSubject, type SandboxLifecycleEvent } from '@kiln/messaging';
import { connect, type NatsConnection } from 'nats';
import { eventually as eventuallyEvery, startPrivateNats, type PrivateServer } from '@kiln/testing';
import { ClonePool } from '../../src/clone-pool';
import { NetworkSlotPool } from '../../src/network';
import { RootfsLayers } from '../../src/rootfs';
import { SandboxManager } from '../../src/sandbox/sandbox-manager.service';
import { TemplateSnapshots } from '../../src/snapshot';
import { VMM_DRIVER, type VmmDriver } from '../../src/vmm';
import { removeSuiteNetwork, runInSandbox, startSandboxAgent } from './sandbox-agent-harness';

/**
 * The sandbox manager and its clone pool wired as the agent wires them (real VMs, real network slots, a private
 * NATS for lifecycle events), in a data dir of their own that shares the built templates. Names and addresses are
 * private to this suite: prefix ktsl, 10.212.0.0/24.
 */
const TEST_DATA_DIR = '/var/lib/kiln-test-lifecycle';
const CLONES_DIR = join(TEST_DATA_DIR, 'clones');

interface AgentContext {
  app: INestApplicationContext;
  manager: SandboxManager;
  clones: ClonePool;
  slots: NetworkSlotPool;
  driver: VmmDriver;
}

const SUITE = { dataDir: TEST_DATA_DIR, prefix: 'ktsl', cidr: '10.212.0.0/24', hostId: 'lifecycle-test' };

async function startAgent(nats: PrivateServer, poolSize: number, warmPool = false): Promise<AgentContext> {
  const { app, manager } = await startSandboxAgent(SUITE, nats, { KILN_CLONE_POOL_SIZE: String(poolSize), KILN_CLONE_POOL_WARM: String(warmPool) });
  return { app, manager, clones: app.get(ClonePool), slots: app.get(NetworkSlotPool), driver: app.get<VmmDriver>(VMM_DRIVER) };
}

/** VM start-up under TCG takes seconds; poll often, wait long. */
const eventually = <T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>) =>
  eventuallyEvery(what, probe, { timeoutMs: 120_000, intervalMs: 50 });

/** The nice value of every thread of a process (field 19 of /proc/<pid>/task/<tid>/stat). */
function threadNiceness(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).map((tid) => {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
  });
}

/** A process that exists and is not a zombie (a VM this process started stays one until it is reaped). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

const create = (manager: SandboxManager, sandboxId: string) =>
  manager.create({
    sandboxId,
    templateId: 'base',
    // The host restores exactly the build it is given: the template's current one, as the scheduler would send it.
    buildId: readlinkSync(join(TEST_DATA_DIR, 'templates', 'base', 'current')),
    teamId: 'lifecycle',
    envVars: { FROM_CREATE: sandboxId },
    metadata: {},
    envdAccessToken: `token-${sandboxId}`,
  });

describe('sandbox lifecycle and clone pool (real VMs)', () => {
  let nats: PrivateServer;

  beforeAll(async () => {
    nats = await startPrivateNats();
    await rm(join(TEST_DATA_DIR, 'sandboxes'), { recursive: true, force: true });
    await rm(CLONES_DIR, { recursive: true, force: true });
  });

  afterAll(async () => {
    await nats?.stop();
    await removeSuiteNetwork(SUITE);
    await rm(CLONES_DIR, { recursive: true, force: true });
  });

  describe('with a pool of one warm clone per template', () => {
    let agent: AgentContext;

    beforeAll(async () => {
      agent = await startAgent(nats, 1, true);
    });

    afterAll(async () => {
      await agent?.app.close();
    });

    const pooled = () => agent.clones.describe().find((t) => t.templateId === 'base')?.clones ?? [];

    it('keeps a paused clone ready and makes the sandbox from it; the pool refills', async () => {
      const [waiting] = await eventually('a clone of base in the pool', () => pooled().length === 1 && pooled());
      // Warmed ahead of demand at the lowest priority, so the warm-up never slows running sandboxes.
      expect(threadNiceness(waiting.pid).every((nice) => nice === 19)).toBe(true);
      const live = await create(agent.manager, 'slpool1');
      expect(threadNiceness(waiting.pid).every((nice) => nice === 0)).toBe(true);
      try {
        // The sandbox runs in the very VMM that was waiting in the pool.
        expect(live.vm?.pid).toBe(waiting.pid);
        expect(live.record.cloneDir).toBe(waiting.dir);
        expect(await runInSandbox(live, 'echo $FROM_CREATE')).toBe('slpool1\n');
        // Its VMM dropped to a uid of its own from the VMM range, sits in an empty chroot and runs under a seccomp filter.
        const status = readFileSync(`/proc/${waiting.pid}/status`, 'utf8');
        const vmmUid = Number(/^Uid:\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(status)?.[1]);
        const { KILN_VMM_UID_BASE, KILN_VMM_UID_COUNT } = new HostAgentEnv();
        expect(vmmUid).toBeGreaterThanOrEqual(KILN_VMM_UID_BASE);
        expect(vmmUid).toBeLessThan(KILN_VMM_UID_BASE + KILN_VMM_UID_COUNT);
        expect(Number(/^Gid:\s+(\d+)/m.exec(status)?.[1])).toBe(vmmUid);
        expect(/^CapEff:\s+(\w+)/m.exec(status)?.[1]).toBe('0000000000000000');
        expect(/^Seccomp:\s+(\d)/m.exec(status)?.[1]).toBe('2');
        // Its chroot is a directory of its own (where a checkpoint's device state is written), empty and root's.
        const jail = realpathSync(join(waiting.dir, 'vm', 'jail'));
        expect(readlinkSync(`/proc/${waiting.pid}/root`)).toBe(jail);
        expect(readdirSync(jail)).toEqual([]);
        expect(statSync(jail).uid).toBe(0);
        const [next] = await eventually('the pool to refill', () => pooled().length === 1 && pooled());
        expect(next.cloneId).not.toBe(waiting.cloneId);
      } finally {
        await agent.manager.destroy('slpool1');
      }
      expect(alive(waiting.pid)).toBe(false);
      expect(existsSync(waiting.dir)).toBe(false);
    });

    it('replaces a pooled clone whose VMM dies', async () => {
      const [victim] = await eventually('a clone in the pool', () => pooled().length === 1 && pooled());
      process.kill(victim.pid, 'SIGKILL');
      const [replacement] = await eventually('a replacement clone', () => pooled()[0]?.cloneId !== victim.cloneId && pooled().length === 1 && pooled());
      expect(alive(replacement.pid)).toBe(true);
      expect(existsSync(victim.dir)).toBe(false);
    });

    it('kills pooled clones and removes their directories when the agent shuts down', async () => {
      const [waiting] = await eventually('a clone in the pool', () => pooled().length === 1 && pooled());
      await agent.app.close();
      expect(alive(waiting.pid)).toBe(false);
      expect(readdirSync(CLONES_DIR)).toEqual([]);
      agent = await startAgent(nats, 1, true);
    });
  });

  describe('without a pool (every create restores on demand)', () => {
    let agent: AgentContext;
    let listener: NatsConnection;
    /** The host's create_failed lifecycle events (E2B's per-node createFails), by sandbox id. */
    const createFailures: SandboxLifecycleEvent[] = [];

    beforeAll(async () => {
      listener = await connect({ servers: nats.url });
      listener.subscribe(sandboxEventSubject('create_failed', { hostId: SUITE.hostId }), {
        callback: (_error, message) => createFailures.push(message.json<SandboxLifecycleEvent>()),
      });
      agent = await startAgent(nats, 0);
      // The snapshot is made (or verified) in the background at start; the races below need it ready.
      await agent.app.get(TemplateSnapshots).ensure('base');
    });

    afterAll(async () => {
      await agent?.app.close();
      await listener?.close();
    });

    /** Starts a create and resolves with its outcome once the VM exists but the guest has not answered /init. */
    async function createCaughtStarting(sandboxId: string) {
      const outcome = create(agent.manager, sandboxId).then(
        (live) => ({ live, error: undefined }),
        (error: unknown) => ({ live: undefined, error }),
      );
      const starting = await eventually('the VM to exist while the sandbox is starting', () => {
        const live = agent.manager.get(sandboxId);
        return live?.state === 'starting' && live.vm ? live : undefined;
      });
      return { outcome, starting, pid: starting.vm!.pid, cloneDir: starting.record.cloneDir! };
    }

    it('a destroy while the guest is starting ends the create at once and leaves nothing behind', async () => {
      const leasedBefore = agent.slots.stats().leased;
      const { outcome, pid, cloneDir } = await createCaughtStarting('slrace1');
      const destroyedAt = Date.now();
      expect(await agent.manager.destroy('slrace1')).toBe(true);
      const { error } = await outcome;
      expect(Date.now() - destroyedAt).toBeLessThan(10_000);
      expect(error).toBeInstanceOf(KilnError);
      expect((error as KilnError).code).toBe(ErrorCode.Conflict);
      expect(agent.manager.get('slrace1')).toBeUndefined();
      expect(alive(pid)).toBe(false);
      expect(existsSync(cloneDir)).toBe(false);
      expect(existsSync(join(TEST_DATA_DIR, 'sandboxes', 'slrace1'))).toBe(false);
      expect(agent.slots.stats().leased).toBe(leasedBefore);
      // A destroy during the start is not the host failing a create (the next test's control: there it is one).
      await listener.flush();
      expect(createFailures.filter((event) => event.sandboxId === 'slrace1')).toEqual([]);
    });

    it('a VM that dies while the guest is starting fails the create at once, not at its deadline', async () => {
      const { outcome, pid, cloneDir } = await createCaughtStarting('slrace2');
      const killedAt = Date.now();
      process.kill(pid, 'SIGKILL');
      const { error } = await outcome;
      expect(Date.now() - killedAt).toBeLessThan(10_000);
      expect((error as KilnError).code).toBe(ErrorCode.Unavailable);
      expect((error as Error).message).toMatch(/VM exited while starting/);
      expect(agent.manager.get('slrace2')).toBeUndefined();
      expect(existsSync(cloneDir)).toBe(false);
      const failure = await eventually('a create_failed event for slrace2', () => createFailures.find((event) => event.sandboxId === 'slrace2'));
      expect(failure).toMatchObject({ kind: 'create_failed', hostId: SUITE.hostId, teamId: 'lifecycle' });
      expect(failure.reason).toMatch(/VM exited while starting/);
      // Checked again now that an event published with slrace1's end would long have arrived.
      expect(createFailures.map((event) => event.sandboxId)).not.toContain('slrace1');
    });

    it('a restarted agent adopts its sandboxes and removes clone directories nobody claims, killing their VMs', async () => {
      const live = await create(agent.manager, 'sladopt1');
      const sandboxPid = live.vm!.pid;
      // A clone left behind by an agent that died before it was claimed: a restored VM in its own directory.
      const strayDir = join(CLONES_DIR, 'cstray0000000000');
      const snapshots = agent.app.get(TemplateSnapshots);
      const snapshot = await snapshots.ensure('base');
      const slot = await agent.slots.acquire();
      mkdirSync(strayDir, { recursive: true });
      const layer = await agent.app.get(RootfsLayers).createLayer('cstray0000000000', snapshot.disk, strayDir);
      const stray = await snapshots.restore(
        snapshot,
        {
          id: 'cstray0000000000',
          stateDir: join(strayDir, 'vm'),
          serialLogPath: join(strayDir, 'serial.log'),
          rootDisk: { path: layer.path, format: layer.format },
          network: { netnsPath: slot.netnsPath, tapName: slot.tapName, guestMac: slot.guestMac },
        },
        { startPaused: true },
      );
      // The agent stops without its shutdown hooks for sandboxes (they outlive it), then starts again.
      await agent.app.close();
      agent = await startAgent(nats, 0);
      try {
        expect(alive(stray.pid)).toBe(false);
        expect(existsSync(strayDir)).toBe(false);
        const adopted = agent.manager.get('sladopt1');
        expect(adopted?.vm?.pid).toBe(sandboxPid);
        expect(await runInSandbox(adopted!, 'echo still here')).toBe('still here\n');
      } finally {
        await agent.manager.destroy('sladopt1');
      }
    });
  });
});
