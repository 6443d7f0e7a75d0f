import 'reflect-metadata';
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { Sandbox, SandboxError, SandboxNotFoundError, ServiceBusyError, AuthenticationError } from 'e2b';
import { BUNDLE, RunningAgent } from '../../guest-agent/test/support/running-agent';
import { FakeHostAgent } from '../../scheduler/test/support/fake-host-agent';
import { SeededTeam, TestStack } from './support/test-stack';

jest.setTimeout(120_000);

let stack: TestStack;
let team: SeededTeam;
let agent: RunningAgent;
const savedEnv = { ...process.env };

/**
 * The official e2b SDK, unchanged, configured only through its environment
 * variables (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY) and pointed at the gateway.
 * The sandbox's traffic goes gateway → route lookup (real scheduler) → the real
 * guest agent running as a local process (no VM and no host agent here: the
 * sandbox record names the guest agent's address as its host proxy).
 */
beforeAll(async () => {
  if (!existsSync(BUNDLE)) execFileSync(process.execPath, [join(__dirname, '..', '..', 'guest-agent', 'tools', 'bundle.mjs')], { stdio: 'inherit' });
  agent = await RunningAgent.start();
  stack = await TestStack.start();
  team = await stack.seedTeam();
  process.env.E2B_API_URL = stack.gateway.apiUrl;
  process.env.E2B_SANDBOX_URL = stack.gateway.sandboxUrl;
  process.env.E2B_API_KEY = team.apiKey;
  delete process.env.E2B_DOMAIN;
  delete process.env.E2B_DEBUG;
});

afterAll(async () => {
  process.env = savedEnv;
  await stack?.stop();
  await agent?.stop();
});

describe('official e2b SDK through the gateway', () => {
  let sandboxId: string;

  beforeAll(async () => {
    sandboxId = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: agent.url, metadata: { suite: 'sdk' } });
    // The host agent hands the guest its token over the slot; here the test plays that part.
    expect((await agent.init({ accessToken: stack.tokens.envdAccessToken(sandboxId) })).status).toBe(204);
  });

  it('connects, runs commands and moves files through the sandbox-traffic listener', async () => {
    const sandbox = await Sandbox.connect(sandboxId);
    expect(sandbox.sandboxId).toBe(sandboxId);
    expect(await sandbox.isRunning()).toBe(true);

    const result = await sandbox.commands.run('echo hello from $((6*7))');
    expect(result).toMatchObject({ exitCode: 0, stdout: 'hello from 42\n' });

    const streamed: string[] = [];
    await sandbox.commands.run('for i in 1 2 3; do echo line$i; sleep 0.1; done', { onStdout: (d) => void streamed.push(d) });
    expect(streamed.join('')).toBe('line1\nline2\nline3\n');

    const path = `/tmp/kiln-gateway-sdk-${process.pid}.txt`;
    await sandbox.files.write(path, 'written through the gateway');
    expect(await sandbox.files.read(path)).toBe('written through the gateway');
    await sandbox.files.remove(path);
  });

  it('reads info, lists, extends the timeout and reads metrics via the API', async () => {
    const info = await Sandbox.getInfo(sandboxId);
    expect(info).toMatchObject({ sandboxId, templateId: 'base', name: 'base', metadata: { suite: 'sdk' }, state: 'running' });

    const page = await Sandbox.list({ query: { metadata: { suite: 'sdk' }, state: ['running'] } }).nextItems();
    expect(page.map((s) => s.sandboxId)).toEqual([sandboxId]);

    await Sandbox.setTimeout(sandboxId, 600_000);
    expect((await Sandbox.getInfo(sandboxId)).endAt.getTime()).toBeGreaterThan(Date.now() + 590_000);

    const metrics = await Sandbox.getMetrics(sandboxId);
    expect(metrics).toHaveLength(1);
    expect(metrics[0].cpuCount).toBeGreaterThan(0);
    expect(metrics[0].memTotal).toBeGreaterThan(0);
  });

  it('pages Sandbox.list() in either order and filters by startedAfter and template', async () => {
    const listed: string[] = [];
    for (let i = 0; i < 3; i++) listed.push(await stack.seedSandbox({ teamId: team.teamId, proxyUrl: agent.url, metadata: { suite: 'sdk-list' } }));
    const everyPage = async (order: 'asc' | 'desc') => {
      const paginator = Sandbox.list({ query: { metadata: { suite: 'sdk-list' } }, order, limit: 1 });
      const seen: Array<{ sandboxId: string; startedAt: Date }> = [];
      while (paginator.hasNext) seen.push(...(await paginator.nextItems()));
      return seen;
    };
    const desc = await everyPage('desc');
    expect(desc.map((s) => s.sandboxId).sort()).toEqual([...listed].sort());
    expect(desc.map((s) => s.startedAt.getTime())).toEqual([...desc.map((s) => s.startedAt.getTime())].sort((a, b) => b - a));
    expect((await everyPage('asc')).map((s) => s.sandboxId)).toEqual(desc.map((s) => s.sandboxId).reverse());

    const newest = desc[0];
    const since = await Sandbox.list({ query: { metadata: { suite: 'sdk-list' }, startedAfter: newest.startedAt } }).nextItems();
    expect(since.map((s) => s.sandboxId)).toEqual([newest.sandboxId]);
    expect(await Sandbox.list({ query: { metadata: { suite: 'sdk-list' }, template: 'base' } }).nextItems()).toHaveLength(3);
    expect(await Sandbox.list({ query: { template: 'no-such-template' } }).nextItems()).toEqual([]);
    for (const id of listed) await Sandbox.kill(id);
  });

  it('pauses, resumes, forks and snapshots through the SDK (the scheduler drives a fake of the host agent)', async () => {
    // The host agent is a separate service: a fake of it on a real gRPC port answers creates, pauses, resumes, forks
    // and snapshots; the sandboxes' traffic still goes to the guest agent process.
    const host = new FakeHostAgent('sdk-fake-host');
    await host.start();
    try {
      await stack.hosts.register({
        hostId: 'sdk-fake-host',
        address: host.address,
        proxyUrl: agent.url,
        acceleration: 'tcg',
        version: 'test',
        vcpus: 64,
        memoryMib: 65536,
        sandboxes: 64,
        templates: ['base'],
        readyCloneTemplates: ['base'],
      });
      const sandbox = await Sandbox.create('base', { timeoutMs: 60_000, lifecycle: { onTimeout: 'pause', autoResume: true } });
      const id = sandbox.sandboxId;
      expect((await Sandbox.getInfo(id)).lifecycle).toEqual({ onTimeout: 'pause', autoResume: true });

      expect(await Sandbox.pause(id)).toBe(true);
      // 409: the SDK's "already paused".
      expect(await sandbox.pause()).toBe(false);
      expect((await Sandbox.getInfo(id)).state).toBe('paused');
      expect((await Sandbox.list({ query: { state: ['paused'] } }).nextItems()).map((s) => s.sandboxId)).toContain(id);

      const resumed = await Sandbox.connect(id, { timeoutMs: 60_000 });
      expect(resumed.sandboxId).toBe(id);
      expect((await Sandbox.getInfo(id)).state).toBe('running');
      expect(host.resumeRequests.map((r) => r.sandboxId)).toEqual([id]);

      const forks = await Sandbox.fork(id, { count: 2, timeoutMs: 30_000 });
      expect(forks).toHaveLength(2);
      for (const fork of forks) {
        expect(fork).toBeInstanceOf(Sandbox);
        expect((fork as Sandbox).sandboxId).not.toBe(id);
      }

      const snapshot = await Sandbox.createSnapshot(id, { name: 'sdk-snap' });
      expect(snapshot).toEqual({ snapshotId: 'sdk-snap:default', names: ['sdk-snap:default'] });
      expect(await Sandbox.listSnapshots({ sandboxId: id }).nextItems()).toEqual([snapshot]);
      const fromSnapshot = await Sandbox.create(snapshot.snapshotId, { timeoutMs: 30_000 });
      expect(host.createRequests.at(-1)).toMatchObject({ sandboxId: fromSnapshot.sandboxId, snapshotId: host.snapshotRequests[0].snapshotId });
      expect(await Sandbox.deleteSnapshot(snapshot.snapshotId)).toBe(true);
      expect(await Sandbox.deleteSnapshot(snapshot.snapshotId)).toBe(false);

      // A paused sandbox is killed like any other (its host destroys its artifacts); a missing one is not found.
      expect(await Sandbox.pause(id)).toBe(true);
      expect(await Sandbox.kill(id)).toBe(true);
      expect(host.destroyed).toContain(id);
      await expect(Sandbox.pause('doesnotexist0')).rejects.toBeInstanceOf(SandboxNotFoundError);
      for (const other of [fromSnapshot.sandboxId, ...forks.map((f) => (f as Sandbox).sandboxId)]) await Sandbox.kill(other);
    } finally {
      await host.stop();
    }
  });

  it('refuses what Kiln does not implement with a 400 naming it: resuming from disk only (onResume: reboot)', async () => {
    const error = await Sandbox.connect(sandboxId, { onResume: 'reboot' } as Parameters<typeof Sandbox.connect>[1]).catch((thrown: unknown) => thrown);
    expect(error).toBeInstanceOf(SandboxError);
    expect((error as Error).message).toContain('memory: false');
  });

  it('kills: kill() is true once, then false, and the sandbox reads as not running', async () => {
    const sandbox = await Sandbox.connect(sandboxId);
    expect(await Sandbox.kill(sandboxId)).toBe(true);
    expect(await Sandbox.kill(sandboxId)).toBe(false);
    expect(await sandbox.isRunning()).toBe(false);
    await expect(Sandbox.getInfo(sandboxId)).rejects.toBeInstanceOf(SandboxNotFoundError);
    await expect(Sandbox.connect(sandboxId)).rejects.toBeInstanceOf(SandboxNotFoundError);
  });

  it('surfaces capacity exhaustion on create as ServiceBusyError and a bad key as AuthenticationError', async () => {
    await expect(Sandbox.create('base', { timeoutMs: 30_000 })).rejects.toBeInstanceOf(ServiceBusyError);
    await expect(Sandbox.list({ apiKey: 'e2b_' + 'f'.repeat(40) }).nextItems()).rejects.toBeInstanceOf(AuthenticationError);
  });
});
