import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MetricsRegistry } from '@kiln/telemetry';
import { CHECKPOINT_FILES, CheckpointStore } from '../../checkpoint';
import { DEFAULT_UFFD_WORKER_BINARY } from '../vmm.config';
import { UffdMetrics } from './uffd-metrics';
import { UffdWorkerSupervisor, type UffdWorkerExit, type UffdWorkerProcess } from './uffd-worker.supervisor';
import { UffdWorkerStartError } from './uffd.errors';

/**
 * The supervisor against the REAL kiln-uffd-worker (apps/host-agent/uffd-worker, `make -C apps/host-agent/uffd-worker`):
 * start/ready, its refusals, stats, stop. Serving pages needs a userfaultfd, which only the worker's C harness can
 * create; from here the worker never gets past waiting for its peer.
 */
const PAGE = 4096;
const GUEST_PAGES = 256; // 1 MiB: a checkpoint's vm.memoryMib = 1

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Guest RAM with random pages and every fourth page zero. */
function guestMemory(): Buffer {
  const memory = Buffer.alloc(GUEST_PAGES * PAGE);
  for (let page = 0; page < GUEST_PAGES; page++) if (page % 4 !== 0) randomBytes(PAGE).copy(memory, page * PAGE);
  return memory;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('UffdWorkerSupervisor with the real kiln-uffd-worker', () => {
  let dir: string;
  let supervisor: UffdWorkerSupervisor;
  const started: UffdWorkerProcess[] = [];

  beforeAll(() => {
    if (!existsSync(DEFAULT_UFFD_WORKER_BINARY)) {
      throw new Error(`${DEFAULT_UFFD_WORKER_BINARY} is missing: build it with make -C apps/host-agent/uffd-worker`);
    }
  });

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-uffd-sup-'));
    supervisor = new UffdWorkerSupervisor(DEFAULT_UFFD_WORKER_BINARY);
  });

  afterEach(async () => {
    await Promise.all(started.splice(0).map((worker) => worker.stop()));
    await rm(dir, { recursive: true, force: true });
  });

  /** A template snapshot dir (manifest.json + memory) as template-snapshots.ts writes it. */
  async function templateSnapshot(name: string, memory = guestMemory(), manifestSha = sha256(memory)): Promise<string> {
    const snapshotDir = join(dir, name);
    await rm(snapshotDir, { recursive: true, force: true });
    await mkdir(snapshotDir);
    await writeFile(join(snapshotDir, 'memory'), memory);
    await writeFile(
      join(snapshotDir, 'manifest.json'),
      JSON.stringify({ formatVersion: 1, memoryMib: 1, files: { memory: { bytes: GUEST_PAGES * PAGE, sha256: manifestSha } } }),
    );
    return snapshotDir;
  }

  /** A checkpoint dir over a template's memory file: 2 runs of changed pages in memory.pages/memory.index. */
  async function checkpoint(name: string, baseDir: string, corruptPages = false): Promise<string> {
    const checkpointDir = join(dir, name);
    await mkdir(checkpointDir);
    const base = await readFile(join(baseDir, 'memory'));
    const runs: Array<[number, number]> = [[3, 2], [100, 5]];
    const index = Buffer.alloc(runs.length * 8);
    runs.forEach(([first, count], i) => {
      index.writeUInt32LE(first, i * 8);
      index.writeUInt32LE(count, i * 8 + 4);
    });
    const pages = randomBytes(7 * PAGE);
    await writeFile(join(checkpointDir, 'memory.pages'), corruptPages ? Buffer.concat([pages.subarray(0, PAGE), Buffer.alloc(6 * PAGE)]) : pages);
    await writeFile(join(checkpointDir, 'memory.index'), index);
    await writeFile(
      join(checkpointDir, 'manifest.json'),
      JSON.stringify({
        formatVersion: 1,
        id: name,
        kind: 'fork',
        keepMemory: true,
        vm: { vcpus: 1, memoryMib: 1, memoryFilePath: join(baseDir, 'memory'), memoryFileIdentity: sha256(base) },
        files: {
          'memory.pages': { bytes: pages.length, sha256: sha256(pages), path: 'memory.pages' },
          'memory.index': { bytes: index.length, sha256: sha256(index), path: 'memory.index' },
        },
      }),
    );
    return checkpointDir;
  }

  async function start(snapshotDir: string, extra: { prefetchPath?: string; timeoutMs?: number } = {}): Promise<UffdWorkerProcess> {
    const worker = await supervisor.start({
      snapshotDir,
      socketPath: join(dir, 'uffd.sock'),
      statsSocketPath: join(dir, 'uffd.stats.sock'),
      timeoutMs: 10_000,
      ...extra,
    });
    started.push(worker);
    return worker;
  }

  async function refusal(snapshotDir: string, extra: { prefetchPath?: string } = {}): Promise<UffdWorkerStartError> {
    const error = await start(snapshotDir, extra).then(
      () => undefined,
      (failure: unknown) => failure,
    );
    expect(error).toBeInstanceOf(UffdWorkerStartError);
    return error as UffdWorkerStartError;
  }

  it('starts on a template snapshot: ready with its socket bound 0600, tracked, stats parse, stop cleans up', async () => {
    const worker = await start(await templateSnapshot('template'));

    const socket = await lstat(worker.socketPath);
    expect(socket.isSocket()).toBe(true);
    expect(socket.mode & 0o777).toBe(0o600);
    expect(supervisor.workers()).toEqual([worker]);
    expect(isAlive(worker.pid)).toBe(true);

    const stats = await worker.stats();
    expect(stats).toMatchObject({ state: 'waiting', faults: 0, copiedPages: 0, zeroPages: 0, bytesCopied: 0, prefetchedPages: 0 });
    expect(stats.latency.upperBoundsUs).toEqual([5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]);
    expect(stats.latency.counts).toEqual(new Array(12).fill(0));
    expect(worker.lastStats).toEqual(stats);

    const exits: UffdWorkerExit[] = [];
    supervisor.onWorkerExit((_worker, exit) => exits.push(exit));
    await worker.stop();
    // SIGTERM is a clean end for the worker (exit 0), not a kill.
    expect(await worker.exited).toEqual({ code: 0, signal: null });
    expect(existsSync(worker.socketPath)).toBe(false);
    expect(existsSync(worker.statsSocketPath)).toBe(false);
    expect(isAlive(worker.pid)).toBe(false);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(supervisor.workers()).toEqual([]);
    expect(exits).toEqual([{ code: 0, signal: null }]);
  });

  it('refuses a template whose memory does not match the manifest sha256, in one line, exit 2 (control: the intact one above)', async () => {
    const memory = guestMemory();
    const error = await refusal(await templateSnapshot('bad-sha', memory, sha256(Buffer.from('something else'))));
    expect(error.exitCode).toBe(2);
    expect(error.workerReason).toMatch(/sha256/);
    expect(error.workerReason).not.toContain('\n');
    expect(error.message).toContain(error.workerReason);
    expect(existsSync(join(dir, 'uffd.sock'))).toBe(false);
    expect(existsSync(join(dir, 'uffd.stats.sock'))).toBe(false);
    expect(supervisor.workers()).toEqual([]);

    // Control: the same memory with its real sha256 is served.
    await start(await templateSnapshot('bad-sha', memory));
  });

  it('refuses a truncated memory file and a missing manifest, each with its reason', async () => {
    const truncatedDir = await templateSnapshot('truncated');
    const memory = await readFile(join(truncatedDir, 'memory'));
    await writeFile(join(truncatedDir, 'memory'), memory.subarray(0, memory.length - PAGE));
    const truncated = await refusal(truncatedDir);
    expect(truncated.exitCode).toBe(2);
    expect(truncated.workerReason).toBeTruthy();

    const missing = await refusal(join(dir, 'no-such-snapshot'));
    expect(missing.exitCode).toBe(2);
    expect(missing.workerReason).toMatch(/manifest\.json/);
  });

  it('starts on a checkpoint over a template memory file, and refuses one whose pages do not match their sha256', async () => {
    const template = await templateSnapshot('base');
    const worker = await start(await checkpoint('fork-ok', template));
    expect((await worker.stats()).state).toBe('waiting');
    await worker.stop();

    const error = await refusal(await checkpoint('fork-corrupt', template, true));
    expect(error.exitCode).toBe(2);
    expect(error.workerReason).toMatch(/sha256/);
  });

  it("starts on a checkpoint sealed by the agent's own CheckpointStore (the layout a pause writes), and refuses it once a page changes", async () => {
    const template = await templateSnapshot('sealed-base');
    const checkpointDir = join(dir, 'sealed-pause');
    await mkdir(checkpointDir);
    const pages = randomBytes(3 * PAGE);
    const index = Buffer.alloc(8);
    index.writeUInt32LE(10, 0);
    index.writeUInt32LE(3, 4);
    await writeFile(join(checkpointDir, CHECKPOINT_FILES.memoryPages), pages);
    await writeFile(join(checkpointDir, CHECKPOINT_FILES.memoryIndex), index);
    await writeFile(join(checkpointDir, CHECKPOINT_FILES.deviceState), randomBytes(512));
    const templateSha = (JSON.parse(await readFile(join(template, 'manifest.json'), 'utf8')) as { files: { memory: { sha256: string } } }).files.memory.sha256;
    await new CheckpointStore(dir).seal(
      checkpointDir,
      {
        id: 'pause-sbx',
        kind: 'pause',
        sourceSandboxId: 'sbx',
        teamId: 'team',
        templateId: 'base',
        buildId: 'build',
        keepMemory: true,
        // As the sandbox manager names a template's memory file: by the sha256 its snapshot manifest records.
        vm: { vcpus: 1, memoryMib: 1, kernelPath: '/k', initrdPath: '/i', kernelArgs: '', memoryFilePath: join(template, 'memory'), memoryFileIdentity: `sha256:${templateSha}`, guestMac: '', accelerator: 'tcg', guestAgentPort: 49983 },
        createdAt: new Date().toISOString(),
        timings: {},
      },
      { [CHECKPOINT_FILES.deviceState]: {}, [CHECKPOINT_FILES.memoryPages]: {}, [CHECKPOINT_FILES.memoryIndex]: {} },
    );
    const worker = await start(checkpointDir);
    expect((await worker.stats()).state).toBe('waiting');
    await worker.stop();

    pages[PAGE] ^= 0xff;
    await writeFile(join(checkpointDir, CHECKPOINT_FILES.memoryPages), pages);
    expect((await refusal(checkpointDir)).workerReason).toMatch(/memory\.pages.*sha256/);
  });

  it('passes --prefetch: a list inside guest RAM is accepted, one past its end is refused in one line', async () => {
    const template = await templateSnapshot('template');
    const runs = (first: number, count: number): Buffer => {
      const run = Buffer.alloc(8);
      run.writeUInt32LE(first, 0);
      run.writeUInt32LE(count, 4);
      return run;
    };
    await writeFile(join(dir, 'inside.prefetch'), runs(0, GUEST_PAGES));
    await writeFile(join(dir, 'outside.prefetch'), runs(GUEST_PAGES - 1, 2));

    const error = await refusal(template, { prefetchPath: join(dir, 'outside.prefetch') });
    expect(error.exitCode).toBe(2);
    expect(error.workerReason).toMatch(/prefetch/);

    const worker = await start(template, { prefetchPath: join(dir, 'inside.prefetch') });
    expect((await worker.stats()).state).toBe('waiting');
  });

  it('notices a worker that exits by itself (a bad handshake): untracked, sockets removed, exit reported', async () => {
    const worker = await start(await templateSnapshot('template'));
    const exits: Array<{ pid: number; exit: UffdWorkerExit }> = [];
    supervisor.onWorkerExit((exited, exit) => exits.push({ pid: exited.pid, exit }));

    // Node cannot pass a userfaultfd (SCM_RIGHTS): a handshake without one must be refused.
    await new Promise<void>((resolve, reject) => {
      const peer = connect(worker.socketPath);
      peer.once('error', reject);
      peer.once('connect', () => peer.end('[{"base_host_virt_addr":4096,"size":1048576,"offset":0,"page_size":4096}]', resolve));
    });

    expect(await worker.exited).toEqual({ code: 2, signal: null });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(supervisor.workers()).toEqual([]);
    expect(exits).toEqual([{ pid: worker.pid, exit: { code: 2, signal: null } }]);
    expect(existsSync(worker.socketPath)).toBe(false);
    expect(existsSync(worker.statsSocketPath)).toBe(false);
  });

  it('feeds /metrics from a live real worker: the gauge counts it, its (zero) counters render', async () => {
    const metrics = new MetricsRegistry();
    new UffdMetrics(metrics, supervisor);
    expect(await metrics.registry.metrics()).toContain('\nkiln_uffd_workers 0\n');

    const worker = await start(await templateSnapshot('template'));
    // The snapshot of one scrape is reused for a second; the next scrape must see the worker.
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const text = await metrics.registry.metrics();
    expect(text).toContain('\nkiln_uffd_workers 1\n');
    expect(text).toContain('\nkiln_uffd_page_faults_total 0\n');
    expect(text).toContain('\nkiln_uffd_fault_latency_seconds_count 0\n');
    expect(worker.lastStats?.state).toBe('waiting');
  });

  it('rejects a worker that never becomes ready within the timeout and kills it', async () => {
    const pidFile = join(dir, 'stuck.pid');
    const stuck = join(dir, 'stuck-worker');
    await writeFile(stuck, `#!/bin/sh\necho $$ > ${pidFile}\nexec sleep 60\n`);
    await chmod(stuck, 0o755);
    const stuckSupervisor = new UffdWorkerSupervisor(stuck);

    const startedAt = Date.now();
    const error = await stuckSupervisor
      .start({ snapshotDir: dir, socketPath: join(dir, 's.sock'), statsSocketPath: join(dir, 's.stats'), timeoutMs: 300 })
      .then(() => undefined, (failure: unknown) => failure);
    expect(error).toBeInstanceOf(UffdWorkerStartError);
    expect((error as Error).message).toMatch(/did not become ready within 300 ms/);
    expect(Date.now() - startedAt).toBeLessThan(5_000);
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    expect(isAlive(pid)).toBe(false);
    expect(stuckSupervisor.workers()).toEqual([]);
  });

  it('rejects a binary that does not exist', async () => {
    const error = await new UffdWorkerSupervisor(join(dir, 'no-such-worker'))
      .start({ snapshotDir: dir, socketPath: join(dir, 'x.sock'), statsSocketPath: join(dir, 'x.stats') })
      .then(() => undefined, (failure: unknown) => failure);
    expect(error).toBeInstanceOf(UffdWorkerStartError);
    expect((error as Error).message).toMatch(/ENOENT/);
  });
});
