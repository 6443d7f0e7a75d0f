import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MetricsRegistry } from '@kiln/telemetry';
import { UffdMetrics, UffdWorkerAdoptError, UffdWorkerSupervisor, type UffdWorkerExit, type UffdWorkerProcess } from '../../src/vmm/uffd';
import type { UffdWorkerStats } from '../../src/vmm/uffd';
import { processStartTicks } from '../../src/vmm/vmm-identities';
import { DEFAULT_UFFD_WORKER_BINARY } from '../../src/vmm/vmm.config';
import { bundleOwner, startReapedOwner, type ReapedOwner } from '../support/owner-process';

/**
 * Workers outliving the agent that started them, and UffdWorkerSupervisor.adopt() taking them over, against the REAL
 * kiln-uffd-worker (`make -C apps/host-agent/uffd-worker`). From here a worker never gets past waiting for its peer
 * (Node cannot pass it a userfaultfd): what is proven is the process side (sessions, signals, pipes, pids), not serving.
 */
const PAGE = 4096;
const GUEST_PAGES = 256;

/** pid's parent, process group and session from /proc/<pid>/stat (fields 4, 5 and 6). */
async function processTree(pid: number): Promise<{ ppid: number; pgrp: number; session: number }> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const [, ppid, pgrp, session] = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
  return { ppid, pgrp, session };
}

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A handshake without a userfaultfd: the worker refuses it with one stderr line and exits 2. */
function badHandshake(socketPath: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const peer = connect(socketPath);
    peer.once('error', reject);
    peer.once('connect', () => peer.end('[{"base_host_virt_addr":4096,"size":1048576,"offset":0,"page_size":4096}]', resolve));
  });
}

describe('UffdWorkerSupervisor.adopt with the real kiln-uffd-worker: workers outlive their agent and are taken over', () => {
  let dir: string;
  let snapshotDir: string;
  let ownerBundle: string;
  const cleanups: Array<() => Promise<void>> = [];

  beforeAll(async () => {
    if (!existsSync(DEFAULT_UFFD_WORKER_BINARY)) {
      throw new Error(`${DEFAULT_UFFD_WORKER_BINARY} is missing: build it with make -C apps/host-agent/uffd-worker`);
    }
    dir = await mkdtemp(join(tmpdir(), 'kiln-uffd-adopt-'));
    ownerBundle = join(dir, 'owner.js');
    await bundleOwner(join(__dirname, 'uffd-worker-owner-process.ts'), ownerBundle);
    // A template snapshot (memory + manifest) as template-snapshots.ts writes it.
    snapshotDir = join(dir, 'template');
    await mkdir(snapshotDir);
    const memory = Buffer.alloc(GUEST_PAGES * PAGE);
    for (let page = 1; page < GUEST_PAGES; page += 2) randomBytes(PAGE).copy(memory, page * PAGE);
    await writeFile(join(snapshotDir, 'memory'), memory);
    const sha256 = createHash('sha256').update(memory).digest('hex');
    await writeFile(join(snapshotDir, 'manifest.json'), JSON.stringify({ formatVersion: 1, memoryMib: 1, files: { memory: { bytes: memory.length, sha256 } } }));
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function socketPaths(name: string): { socketPath: string; statsSocketPath: string } {
    return { socketPath: join(dir, `${name}.sock`), statsSocketPath: join(dir, `${name}.stats.sock`) };
  }

  /** A worker started by a supervisor in this process (the first agent), stopped after the test if still there. */
  async function startHere(name: string): Promise<{ worker: UffdWorkerProcess; ticks: string }> {
    const first = new UffdWorkerSupervisor(DEFAULT_UFFD_WORKER_BINARY);
    const worker = await first.start({ snapshotDir, ...socketPaths(name), timeoutMs: 10_000 });
    cleanups.push(() => worker.stop());
    const ticks = await processStartTicks(worker.pid);
    expect(ticks).toBeDefined();
    return { worker, ticks: ticks! };
  }

  it('a worker started by an agent stand-in outlives a SIGKILL of that agent\'s process group (an ordinary child does not); a second supervisor adopts it: listed, scraped, stopped by SIGTERM with its last stats reported', async () => {
    const paths = socketPaths('orphan');
    const owner: ReapedOwner<{ workerPid: number; sleepPid: number }> = await startReapedOwner(ownerBundle, [
      JSON.stringify({ binaryPath: DEFAULT_UFFD_WORKER_BINARY, snapshotDir, ...paths }),
    ]);
    cleanups.push(() => owner.stopReaper());
    const { workerPid, sleepPid } = owner.started;
    cleanups.push(async () => {
      // Only if this test failed before stopping it: wait for its reaping before the reaper goes.
      if (existsSync(`/proc/${workerPid}`)) process.kill(workerPid, 'SIGKILL');
      await waitFor(() => !existsSync(`/proc/${workerPid}`));
    });
    const ticks = await processStartTicks(workerPid);
    expect(ticks).toBeDefined();
    // The worker is the agent's child but leads a session (and group) of its own; the plain child is in the agent's.
    expect(await processTree(workerPid)).toEqual({ ppid: owner.pid, pgrp: workerPid, session: workerPid });
    expect((await processTree(sleepPid)).pgrp).toBe(owner.pid);

    await owner.killGroup();
    // Control: the group kill reached what shares the agent's group.
    await waitFor(async () => (await processStartTicks(sleepPid)) === undefined);
    // The worker runs on, orphaned (reparented to the subreaper), its socket still there for its VMM.
    expect(await processStartTicks(workerPid)).toBe(ticks);
    expect((await processTree(workerPid)).ppid).toBe(owner.reaperPid);
    expect(existsSync(paths.socketPath)).toBe(true);

    const second = new UffdWorkerSupervisor(DEFAULT_UFFD_WORKER_BINARY);
    const exits: Array<{ pid: number; exit: UffdWorkerExit; lastStats: UffdWorkerStats | undefined }> = [];
    second.onWorkerExit((worker, exit) => exits.push({ pid: worker.pid, exit, lastStats: worker.lastStats }));
    const metrics = new MetricsRegistry();
    new UffdMetrics(metrics, second);
    const adopted = await second.adopt({ pid: workerPid, processStartTicks: ticks!, ...paths });
    expect(adopted.pid).toBe(workerPid);
    expect(second.workers()).toEqual([adopted]);
    // Adopting it again returns the same tracked worker (its counters are not counted twice).
    expect(await second.adopt({ pid: workerPid, processStartTicks: ticks!, ...paths })).toBe(adopted);

    // Scraped into /metrics like a worker this process started.
    const text = await metrics.registry.metrics();
    expect(text).toContain('\nkiln_uffd_workers 1\n');
    expect(text).toContain('\nkiln_uffd_page_faults_total 0\n');
    expect(adopted.lastStats?.state).toBe('waiting');
    expect(await adopted.stats()).toMatchObject({ state: 'waiting', faults: 0 });

    const stopStarted = Date.now();
    await adopted.stop();
    // Well inside the 2 s grace: SIGTERM ended it, no SIGKILL was needed.
    expect(Date.now() - stopStarted).toBeLessThan(1_500);
    expect(await processStartTicks(workerPid)).toBeUndefined();
    expect(await adopted.exited).toEqual({ code: null, signal: null, statusUnknown: true });
    expect(existsSync(paths.socketPath)).toBe(false);
    expect(existsSync(paths.statsSocketPath)).toBe(false);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(second.workers()).toEqual([]);
    expect(exits).toEqual([{ pid: workerPid, exit: { code: null, signal: null, statusUnknown: true }, lastStats: expect.objectContaining({ state: 'waiting' }) }]);
    await waitFor(() => !existsSync(`/proc/${workerPid}`));
  });

  it('refuses to adopt with start ticks that are not the running process\'s (a reused pid) or a pid that is gone, and signals nothing (control: the right ticks are adopted)', async () => {
    const { worker, ticks } = await startHere('ticks');
    const second = new UffdWorkerSupervisor(DEFAULT_UFFD_WORKER_BINARY);
    const record = { pid: worker.pid, processStartTicks: ticks, socketPath: worker.socketPath, statsSocketPath: worker.statsSocketPath };

    const reused = await second.adopt({ ...record, processStartTicks: String(Number(ticks) + 1) }).catch((error: unknown) => error);
    expect(reused).toBeInstanceOf(UffdWorkerAdoptError);
    expect((reused as Error).message).toMatch(/no longer running: the pid now belongs to another process/);
    const unrecorded = await second.adopt({ ...record, processStartTicks: '' }).catch((error: unknown) => error);
    expect(unrecorded).toBeInstanceOf(UffdWorkerAdoptError);
    expect(second.workers()).toEqual([]);
    // Nothing was signalled: the worker still answers.
    expect(await processStartTicks(worker.pid)).toBe(ticks);
    expect((await worker.stats()).state).toBe('waiting');

    // Control: the same record with the right ticks is adopted.
    const adopted = await second.adopt(record);
    expect(second.workers()).toEqual([adopted]);
    await adopted.stop();
    expect(await worker.exited).toEqual({ code: 0, signal: null });

    const gone = await second.adopt(record).catch((error: unknown) => error);
    expect(gone).toBeInstanceOf(UffdWorkerAdoptError);
    expect((gone as Error).message).toMatch(/no longer running: the pid is gone/);
  });

  it('notices an adopted worker that exits by itself (a bad handshake): untracked and reported once, with the stats it last read', async () => {
    const { worker, ticks } = await startHere('self-exit');
    const second = new UffdWorkerSupervisor(DEFAULT_UFFD_WORKER_BINARY);
    const exits: Array<{ exit: UffdWorkerExit; lastStats: UffdWorkerStats | undefined }> = [];
    second.onWorkerExit((exited, exit) => exits.push({ exit, lastStats: exited.lastStats }));
    const adopted = await second.adopt({ pid: worker.pid, processStartTicks: ticks, socketPath: worker.socketPath, statsSocketPath: worker.statsSocketPath });
    await adopted.stats();

    await badHandshake(worker.socketPath);
    // Found by polling its pid (0.5 s), not by an exit event.
    expect(await adopted.exited).toEqual({ code: null, signal: null, statusUnknown: true });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(second.workers()).toEqual([]);
    expect(exits).toEqual([{ exit: { code: null, signal: null, statusUnknown: true }, lastStats: expect.objectContaining({ state: 'waiting' }) }]);
    // Its parent here saw how it really ended.
    expect(await worker.exited).toEqual({ code: 2, signal: null });
  });

  it('a worker whose stdout/stderr pipes lost their reader (a dead agent) is not killed by writing to them: it writes its refusal line and exits 2, not by SIGPIPE (control: with a reader the line arrives)', async () => {
    const run = async (name: string, dropReaders: boolean): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> => {
      const paths = socketPaths(name);
      // As UffdWorkerSupervisor.start spawns it.
      const child = spawn(DEFAULT_UFFD_WORKER_BINARY, ['--socket', paths.socketPath, '--snapshot', snapshotDir, '--stats-socket', paths.statsSocketPath], {
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
      cleanups.push(async () => {
        child.kill('SIGKILL');
        await exited;
      });
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      await new Promise<void>((resolve, reject) => {
        child.stdout.setEncoding('utf8').on('data', (chunk: string) => chunk.includes('ready') && resolve());
        void exited.then(() => reject(new Error(`worker exited before ready: ${stderr}`)));
      });
      if (dropReaders) {
        // This process's ends of its pipes are closed: a write to them now fails with EPIPE (or raises SIGPIPE).
        child.stdout.destroy();
        child.stderr.destroy();
      }
      await badHandshake(paths.socketPath);
      return { ...(await exited), stderr };
    };

    const control = await run('with-reader', false);
    expect(control).toEqual({ code: 2, signal: null, stderr: 'kiln-uffd-worker: handshake carried no file descriptor (the userfaultfd)\n' });
    const orphaned = await run('without-reader', true);
    expect(orphaned).toEqual({ code: 2, signal: null, stderr: '' });
  });
});
