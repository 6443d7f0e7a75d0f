import 'reflect-metadata';
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { Sandbox, SandboxError, SandboxNotFoundError, ServiceBusyError, AuthenticationError } from 'e2b';
import { BUNDLE, RunningAgent } from '../../guest-agent/test/support/running-agent';
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

  it('raises a clear error, never SandboxNotFoundError or "already paused", for what Kiln does not have yet', async () => {
    const notSupported = async (what: Promise<unknown>) => {
      const error = await what.then(
        (value) => ({ resolvedWith: value }),
        (thrown: unknown) => thrown,
      );
      expect(error).toBeInstanceOf(SandboxError);
      expect(error).not.toBeInstanceOf(SandboxNotFoundError);
      expect((error as Error).message).toMatch(/^501: .*not supported by this deployment/);
    };
    const sandbox = await Sandbox.connect(sandboxId);
    // With the old 409, pause() answered false ("already paused") and the caller carried on.
    await notSupported(Sandbox.pause(sandboxId));
    await notSupported(sandbox.pause());
    await notSupported(Sandbox.createSnapshot(sandboxId));
    await notSupported(Sandbox.listSnapshots().nextItems());
    await notSupported(Sandbox.fork(sandboxId));
    // With the old 404, deleteSnapshot() answered false ("not found").
    await notSupported(Sandbox.deleteSnapshot('base'));
    expect(await sandbox.isRunning()).toBe(true);
    // A missing sandbox is still not found.
    await expect(Sandbox.pause('doesnotexist0')).rejects.toBeInstanceOf(SandboxNotFoundError);
  });

  it("refuses lifecycle onTimeout 'pause' at create with a 400 naming autoPause, rather than killing the sandbox at its timeout", async () => {
    const error = await Sandbox.create('base', { timeoutMs: 30_000, lifecycle: { onTimeout: 'pause' } }).catch((thrown: unknown) => thrown);
    expect(error).toBeInstanceOf(SandboxError);
    expect((error as Error).message).toBe('400: not supported by this deployment: autoPause');
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
