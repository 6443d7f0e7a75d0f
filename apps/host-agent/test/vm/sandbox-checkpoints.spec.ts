import 'reflect-metadata';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { open, readdir, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { eventually, startPrivateNats, type PrivateServer } from '@kiln/testing';
import type { LiveSandbox } from '../../src/sandbox/sandbox-manager.service';
import { removeSuiteNetwork, runInSandbox, startSandboxAgent, type SandboxAgent } from './sandbox-agent-harness';

/**
 * Pause/resume with memory, fork and named snapshots on real VMs, through the sandbox manager as the agent wires it.
 * A data dir of its own that shares the built templates; slot prefix ktck, 10.224.0.0/24.
 */
const TEST_DATA_DIR = '/var/lib/kiln-test-checkpoints';
const PREFIX = 'ktck';
const CIDR = '10.224.0.0/24';

const SUITE = { dataDir: TEST_DATA_DIR, prefix: PREFIX, cidr: CIDR, hostId: 'checkpoints-test' };
const startAgent = (nats: PrivateServer) => startSandboxAgent(SUITE, nats);
const run = runInSandbox;

/** GET / of the guest's port 8000, straight to its slot address (the host side of the guest's network). */
function httpGet(live: LiveSandbox, port = 8000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: live.slot!.hostAddress, port, path: '/', timeout: 20_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

const buildId = () => readlinkSync(join(TEST_DATA_DIR, 'templates', 'base', 'current'));

const createInput = (sandboxId: string) => ({
  sandboxId,
  templateId: 'base',
  buildId: buildId(),
  teamId: 'checkpoints',
  envVars: { FROM_CREATE: sandboxId },
  metadata: {},
  envdAccessToken: `token-${sandboxId}`,
});

/** A counter that keeps counting in memory only (written out on request), and a web server on port 8000. */
const START_WORKLOAD = [
  'mkdir -p /home/user/www && echo "served from $FROM_CREATE" > /home/user/www/index.html',
  'nohup python3 -m http.server 8000 --directory /home/user/www >/dev/null 2>&1 &',
  `nohup python3 -c '
import signal, time
n = 0
def dump(*_):
    open("/tmp/counter", "w").write(str(n))
signal.signal(signal.SIGUSR1, dump)
while True:
    n += 1
    time.sleep(0.01)
' >/dev/null 2>&1 &`,
  'echo $! > /tmp/counter.pid',
  'for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null && break; sleep 0.1; done',
  'echo started',
].join('\n');
const READ_COUNTER = 'rm -f /tmp/counter; kill -USR1 $(cat /tmp/counter.pid); for i in $(seq 100); do [ -s /tmp/counter ] && break; sleep 0.05; done; cat /tmp/counter';

describe('pause, resume, fork and named snapshots (real VMs)', () => {
  let nats: PrivateServer;
  let agent: SandboxAgent;

  beforeAll(async () => {
    nats = await startPrivateNats();
    for (const dir of ['sandboxes', 'clones', 'checkpoints']) await rm(join(TEST_DATA_DIR, dir), { recursive: true, force: true });
    agent = await startAgent(nats);
  });

  afterAll(async () => {
    for (const live of agent?.manager.list() ?? []) await agent.manager.destroy(live.record.sandboxId).catch(() => undefined);
    await agent?.app.close();
    await nats?.stop();
    await removeSuiteNetwork(SUITE);
    for (const dir of ['sandboxes', 'clones', 'checkpoints']) await rm(join(TEST_DATA_DIR, dir), { recursive: true, force: true });
  });

  it('pauses and resumes three times: files, the in-memory counter and the listening server carry on; a paused sandbox holds no VMM, slot or RAM', async () => {
    const { manager } = agent;
    let live = await manager.create(createInput('ckcycle'));
    expect(await run(live, START_WORKLOAD)).toContain('started');
    let lastCount = 0;
    for (let cycle = 1; cycle <= 3; cycle++) {
      await run(live, `echo cycle-${cycle} > /home/user/cycle-${cycle}.txt`);
      const pid = live.vm!.pid;
      const report = await manager.pause('ckcycle', true);
      expect(report.paused.keepMemory).toBe(true);
      expect(report.paused.memoryBytes).toBeGreaterThan(0);
      // The bytes kept follow the pages the guest changed, far below its 512 MiB of RAM.
      expect(report.paused.memoryBytes).toBeLessThan(256 * 1024 * 1024);
      expect(manager.get('ckcycle')?.state).toBe('paused');
      // The VMM (and its RAM) goes right after the answer.
      await eventually('the paused VMM to be gone', () => !alive(pid), { timeoutMs: 10_000, intervalMs: 20 });
      expect(manager.get('ckcycle')?.slot).toBeUndefined();
      expect(manager.usage().memoryMib).toBe(0);
      // Pausing twice is a conflict (the SDK reads it as "already paused").
      await expect(manager.pause('ckcycle', true)).rejects.toMatchObject({ code: ErrorCode.Conflict });

      live = await manager.resume('ckcycle', { envdAccessToken: 'token-ckcycle' });
      expect(live.state).toBe('running');
      for (let earlier = 1; earlier <= cycle; earlier++) expect(await run(live, `cat /home/user/cycle-${earlier}.txt`)).toBe(`cycle-${earlier}\n`);
      const count = Number(await run(live, READ_COUNTER));
      // The counter went on from where it stopped: larger than at the last look, and not restarted from zero.
      expect(count).toBeGreaterThan(lastCount);
      lastCount = count;
      expect(await httpGet(live)).toEqual({ status: 200, body: 'served from ckcycle\n' });
      await expect(manager.resume('ckcycle', {})).rejects.toMatchObject({ code: ErrorCode.Conflict });
    }
    await manager.destroy('ckcycle');
  });

  it('refuses to restore a corrupted artifact and keeps the sandbox paused; the intact artifact then resumes', async () => {
    const { manager } = agent;
    const live = await manager.create(createInput('ckcorrupt'));
    await run(live, 'echo kept > /home/user/kept.txt');
    const { paused } = await manager.pause('ckcorrupt', true);
    const pages = join(paused.checkpointDir, 'memory.pages');
    const handle = await open(pages, 'r+');
    const original = Buffer.alloc(1);
    try {
      await handle.read(original, 0, 1, 4096);
      await handle.write(Buffer.from([original[0] ^ 0xff]), 0, 1, 4096);
    } finally {
      await handle.close();
    }
    const refused = await manager.resume('ckcorrupt', {}).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(KilnError);
    expect(refused).toMatchObject({ code: ErrorCode.FailedPrecondition });
    expect((refused as Error).message).toMatch(/memory\.pages does not match its sha256/);
    expect(manager.get('ckcorrupt')?.state).toBe('paused');

    const repair = await open(pages, 'r+');
    try {
      await repair.write(original, 0, 1, 4096);
    } finally {
      await repair.close();
    }
    const resumed = await manager.resume('ckcorrupt', {});
    expect(await run(resumed, 'cat /home/user/kept.txt')).toBe('kept\n');
    await manager.destroy('ckcorrupt');
  });

  it('forks a running sandbox: each fork has its files and running process, writes stay apart, the source keeps its id and VMM', async () => {
    const { manager } = agent;
    const source = await manager.create(createInput('cksource'));
    expect(await run(source, START_WORKLOAD)).toContain('started');
    await run(source, 'echo from-source > /home/user/shared.txt');
    const sourcePid = source.vm!.pid;
    const before = Number(await run(source, READ_COUNTER));

    const report = await manager.fork('cksource', ['ckfork-a', 'ckfork-b'].map((id) => createInput(id)));
    expect(report.results.map((r) => [r.sandboxId, r.error?.message])).toEqual([
      ['ckfork-a', undefined],
      ['ckfork-b', undefined],
    ]);
    const [a, b] = report.results.map((r) => r.sandbox!);
    expect(manager.get('cksource')?.vm?.pid).toBe(sourcePid);
    expect(manager.get('cksource')?.state).toBe('running');
    for (const fork of [a, b]) {
      expect(await run(fork, 'cat /home/user/shared.txt')).toBe('from-source\n');
      // The counting process came along, counting on from the checkpoint.
      expect(Number(await run(fork, READ_COUNTER))).toBeGreaterThanOrEqual(before);
      expect(await httpGet(fork)).toEqual({ status: 200, body: 'served from cksource\n' });
    }
    await run(a, 'echo only-a > /home/user/mine.txt');
    expect(await run(a, 'cat /home/user/mine.txt')).toBe('only-a\n');
    expect(await run(b, 'cat /home/user/mine.txt 2>&1 || true')).toContain('No such file');
    expect(await run(source, 'cat /home/user/mine.txt 2>&1 || true')).toContain('No such file');

    // The fork checkpoint is kept while forks back onto it, and goes with the last of them.
    const forkDirs = () => readdir(join(TEST_DATA_DIR, 'checkpoints', 'forks')).catch(() => [] as string[]);
    expect(await forkDirs()).toHaveLength(1);
    await manager.destroy('ckfork-a');
    expect(await forkDirs()).toHaveLength(1);
    await manager.destroy('ckfork-b');
    expect(await forkDirs()).toHaveLength(0);
    await manager.destroy('cksource');
  });

  it('a named snapshot outlives its source; sandboxes start from it with its state; delete removes it once unused', async () => {
    const { manager } = agent;
    const source = await manager.create(createInput('cksnapsrc'));
    await run(source, 'echo in-snapshot > /home/user/snap.txt');
    const report = await manager.createSnapshot('cksnapsrc', 'snap-one');
    expect(report.manifest.kind).toBe('snapshot');
    await expect(manager.createSnapshot('cksnapsrc', 'snap-one')).rejects.toMatchObject({ code: ErrorCode.AlreadyExists });
    await manager.destroy('cksnapsrc');

    const restored = await manager.create({ ...createInput('cksnapnew'), snapshotId: 'snap-one' });
    expect(await run(restored, 'cat /home/user/snap.txt')).toBe('in-snapshot\n');
    // The guest takes the new sandbox's token (it held the source's), and the source's no longer works.
    expect(restored.record.envdAccessToken).toBe('token-cksnapnew');

    const snapshotDir = join(TEST_DATA_DIR, 'checkpoints', 'snapshots', 'snap-one');
    expect(await manager.deleteSnapshot('snap-one')).toBe(true);
    // Still backing the sandbox's disk: kept, but nothing new starts from it.
    expect(existsSync(snapshotDir)).toBe(true);
    await expect(manager.create({ ...createInput('cksnaplate'), snapshotId: 'snap-one' })).rejects.toMatchObject({ code: ErrorCode.FailedPrecondition });
    await manager.destroy('cksnapnew');
    expect(existsSync(snapshotDir)).toBe(false);
  });

  it('a restarted agent finds a paused sandbox paused and resumes it', async () => {
    let live = await agent.manager.create(createInput('ckrestart'));
    await run(live, 'echo survives > /home/user/restart.txt');
    await agent.manager.pause('ckrestart', true);
    await agent.app.close();
    agent = await startAgent(nats);
    expect(agent.manager.get('ckrestart')?.state).toBe('paused');
    live = await agent.manager.resume('ckrestart', {});
    expect(await run(live, 'cat /home/user/restart.txt')).toBe('survives\n');
    await agent.manager.destroy('ckrestart');
  });

  it('a pause without memory keeps the disk; the resume boots it fresh from that disk', async () => {
    const { manager } = agent;
    const live = await manager.create(createInput('cknomem'));
    // No sync of its own: the pause has the guest write its page cache out first.
    await run(live, 'echo on-disk > /home/user/disk.txt');
    const report = await manager.pause('cknomem', false);
    expect(report.paused).toMatchObject({ keepMemory: false, memoryBytes: 0 });
    const resumed = await manager.resume('cknomem', {});
    expect(await run(resumed, 'cat /home/user/disk.txt')).toBe('on-disk\n');
    // A fresh boot: the guest's uptime starts again.
    expect(Number((await run(resumed, 'cut -d. -f1 /proc/uptime')).trim())).toBeLessThan(300);
    // It can be paused again, with its memory this time.
    await manager.pause('cknomem', true);
    const again = await manager.resume('cknomem', {});
    expect(await run(again, 'cat /home/user/disk.txt')).toBe('on-disk\n');
    await manager.destroy('cknomem');
  });
});
