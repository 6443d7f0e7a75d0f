import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { request } from 'node:http';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FirecrackerApiError, FirecrackerCheckpointBaseLostError, FirecrackerConnectionError } from '../../src/vmm/firecracker/firecracker.errors';
import { FirecrackerDriver } from '../../src/vmm/firecracker/firecracker.driver';
import { FirecrackerStartError } from '../../src/vmm/firecracker/firecracker.errors';
import { jailerIdFor } from '../../src/vmm/firecracker/firecracker-jailer';
import { UffdWorkerStartError, UffdWorkerSupervisor, type UffdWorkerRecord } from '../../src/vmm/uffd';
import { processStartTicks } from '../../src/vmm/vmm-identities';
import { DEFAULT_UFFD_WORKER_BINARY, VmmConfig } from '../../src/vmm/vmm.config';
import { InvalidVmSpecError, VmSnapshotError } from '../../src/vmm/vmm.errors';
import type { VmCheckpoint, VmHandle, VmSpec } from '../../src/vmm/vmm-driver';
import { bundleOwner, startReapedOwner, type ReapedOwner } from '../support/owner-process';
import { fakeVmSpec } from './fake-vm-spec';

const FAKE_FIRECRACKER = join(__dirname, 'fake-firecracker.cjs');
const FAKE_JAILER = join(__dirname, 'fake-jailer.cjs');
/** The real UFFD worker (apps/host-agent/uffd-worker), built by `make -C apps/host-agent/uffd-worker`. */
const WORKER_BUILT = existsSync(DEFAULT_UFFD_WORKER_BINARY);

interface Recorded {
  who: 'jailer' | 'firecracker';
  argv?: string[];
  options?: Record<string, unknown>;
  pid?: number;
  method?: string;
  path?: string;
  body?: Record<string, unknown>;
  status?: number;
  fault?: string;
  shapeProblems?: string[];
  backendIsSocket?: boolean;
  event?: string;
}

describe('contract: FirecrackerDriver against a recording fake of the Firecracker API and jailer (no Firecracker binary on this machine)', () => {
  let base: string;
  let chrootBase: string;
  let config: VmmConfig;
  let driver: FirecrackerDriver;
  let supervisor: UffdWorkerSupervisor;
  const handles: VmHandle[] = [];
  let counter = 0;

  beforeAll(async () => {
    // Short: the API socket path (<base>/j/fake-firecracker.cjs/<id>/root/api.sock) must fit a unix socket address.
    base = await mkdtemp(join(tmpdir(), 'fc-'));
    chrootBase = join(base, 'j');
    await mkdir(chrootBase);
    // An uncompressed ELF64 header is all the driver reads of the kernel (the fake boots nothing).
    await writeFile(join(base, 'vmlinux'), Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01]), Buffer.alloc(64)]));
    await writeFile(join(base, 'netns'), '');
    config = new VmmConfig(base, 'qemu-system-x86_64', 'kvm', 128, 1000, undefined, 'firecracker', {
      binary: FAKE_FIRECRACKER,
      jailerBinary: FAKE_JAILER,
      kernelPath: join(base, 'vmlinux'),
      chrootBase,
    });
    supervisor = new UffdWorkerSupervisor(config.uffdWorkerBinary);
    driver = new FirecrackerDriver(config, supervisor);
  });

  afterEach(async () => {
    for (const handle of handles.splice(0)) await handle.kill().catch(() => undefined);
  });

  afterAll(async () => {
    await rm(base, { recursive: true, force: true });
  });

  async function newSpec(overrides: Partial<VmSpec> = {}): Promise<VmSpec> {
    return fakeVmSpec(base, `vm-${++counter}`, {
      network: { netnsPath: join(base, 'netns'), tapName: 'tap0', guestMac: '02:FC:00:00:00:05' },
      ...overrides,
    });
  }


  /** The fake reads its behaviour and writes its records under the jailer id (`vm-<VM id>`): these take the VM id. */
  async function control(vmId: string, behaviour: Record<string, unknown>): Promise<void> {
    const path = join(chrootBase, 'fake-control.json');
    const current = JSON.parse(await readFile(path, 'utf8').catch(() => '{}')) as Record<string, unknown>;
    await writeFile(path, JSON.stringify({ ...current, [jailerIdFor(vmId)]: behaviour }));
  }

  async function records(vmId: string): Promise<Recorded[]> {
    const text = await readFile(join(chrootBase, 'records', `${jailerIdFor(vmId)}.jsonl`), 'utf8').catch(() => '');
    return text.split('\n').filter(Boolean).map((line) => JSON.parse(line) as Recorded);
  }

  /** The API calls in order, without the GET / the driver polls readiness with. */
  async function calls(id: string): Promise<Recorded[]> {
    return (await records(id)).filter((r) => r.who === 'firecracker' && r.method && !(r.method === 'GET' && r.path === '/'));
  }

  const callNames = (list: Recorded[]) => list.map((c) => `${c.method} ${c.path}`);

  function expectEveryCallAccepted(list: Recorded[]): void {
    for (const call of list) {
      expect(call.shapeProblems).toBeUndefined();
      expect({ call: `${call.method} ${call.path}`, status: call.status }).toEqual({ call: `${call.method} ${call.path}`, status: 204 });
    }
  }

  async function track<T extends VmHandle>(promise: Promise<T>): Promise<T> {
    const handle = await promise;
    handles.push(handle);
    return handle;
  }

  /** A template snapshot dir the UFFD worker accepts (manifest with files.memory) plus Firecracker device state. */
  async function templateSnapshot(name: string, options: { corruptSha?: boolean } = {}): Promise<string> {
    const dir = join(base, name);
    await mkdir(dir, { recursive: true });
    const memory = Buffer.alloc(1024 * 1024);
    memory.fill(0x5a, 0, 4096);
    await writeFile(join(dir, 'memory'), memory);
    const sha256 = options.corruptSha ? '0'.repeat(64) : createHash('sha256').update(memory).digest('hex');
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ formatVersion: 8, memoryMib: 1, files: { memory: { bytes: memory.length, sha256 } } }));
    await writeFile(join(dir, 'state'), 'firecracker vmstate\n');
    return join(dir, 'state');
  }

  it('create: runs the jailer with the VM uid/gid, chroot base, netns and Firecracker args, then configures and starts in order', async () => {
    const spec = await newSpec();
    const vm = await track(driver.spawn(spec));
    const [jailer] = await records(spec.id);
    expect(jailer.who).toBe('jailer');
    expect(jailer.argv).toEqual([
      '--id', jailerIdFor(spec.id),
      '--exec-file', FAKE_FIRECRACKER,
      '--uid', '0',
      '--gid', '0',
      '--chroot-base-dir', chrootBase,
      '--netns', spec.network!.netnsPath,
      '--', '--api-sock', '/api.sock',
    ]);
    // The jailer "exec'd" Firecracker: the pid the driver holds is the VMM's.
    expect(jailer.pid).toBe(vm.pid);
    const list = await calls(spec.id);
    expect(callNames(list)).toEqual(['PUT /machine-config', 'PUT /boot-source', 'PUT /drives/rootfs', 'PUT /network-interfaces/eth0', 'PUT /actions']);
    expectEveryCallAccepted(list);
    expect(list.map((c) => c.body)).toEqual([
      { vcpu_count: 2, mem_size_mib: 256, smt: false, track_dirty_pages: false },
      { kernel_image_path: '/vmlinux', boot_args: 'console=ttyS0 reboot=k panic=1' },
      { drive_id: 'rootfs', is_root_device: true, is_read_only: false, path_on_host: '/rootfs' },
      { iface_id: 'eth0', host_dev_name: 'tap0', guest_mac: '02:fc:00:00:00:05' },
      { action_type: 'InstanceStart' },
    ]);
    expect(await vm.state()).toBe('running');
    expect(vm.startTimings?.runningMs).toBeGreaterThan(0);
  });

  it('create with startPaused: InstanceStart then PATCH /vm Paused; a read-only disk and an initrd are passed as such', async () => {
    const spec = await newSpec();
    await writeFile(join(base, 'initrd'), 'initrd');
    const vm = await track(driver.spawn({ ...spec, initrdPath: join(base, 'initrd'), rootDisk: { ...spec.rootDisk, readOnly: true }, network: undefined }, { startPaused: true }));
    const list = await calls(spec.id);
    expectEveryCallAccepted(list);
    expect(callNames(list)).toEqual(['PUT /machine-config', 'PUT /boot-source', 'PUT /drives/rootfs', 'PUT /actions', 'PATCH /vm']);
    expect(list[1].body).toEqual({ kernel_image_path: '/vmlinux', boot_args: spec.kernelArgs, initrd_path: '/initrd' });
    expect(list[2].body).toMatchObject({ is_read_only: true });
    expect(list[4].body).toEqual({ state: 'Paused' });
    expect(await vm.state()).toBe('paused');
    // Without a netns the jailer is not asked to join one.
    expect((await records(spec.id))[0].argv).not.toContain('--netns');
  });

  it("the fake checks request shapes: unknown fields, wrong enums, missing required fields and wrong types get Firecracker's 400", async () => {
    const spec = await newSpec();
    const vm = await track(driver.spawn(spec, { startPaused: true }));
    const socketPath = join(chrootBase, 'fake-firecracker.cjs', jailerIdFor(spec.id), 'root', 'api.sock');
    const bad: Array<[string, string, unknown, RegExp]> = [
      ['PATCH', '/vm', { state: 'Running' }, /Vm.state must be one of Paused, Resumed/],
      ['PATCH', '/vm', { state: 'Paused', extra: 1 }, /Vm.extra is not a field of this request/],
      ['PUT', '/snapshot/create', { snapshot_path: '/s' }, /SnapshotCreateParams.mem_file_path is required/],
      ['PUT', '/snapshot/create', { snapshot_path: '/s', mem_file_path: '/m', snapshot_type: 'full' }, /snapshot_type must be one of Full, Diff/],
      ['PUT', '/machine-config', { vcpu_count: '2', mem_size_mib: 256 }, /vcpu_count must be an integer/],
      ['PUT', '/nonexistent', {}, /Invalid request method and\/or path/],
    ];
    for (const [method, path, body, fault] of bad) {
      const answer = await rawCall(socketPath, method, path, body);
      expect({ path, status: answer.status }).toEqual({ path, status: 400 });
      expect(answer.fault).toMatch(fault);
    }
    // Control: the same socket accepts a well-formed call.
    expect((await rawCall(socketPath, 'PATCH', '/vm', { state: 'Resumed' })).status).toBe(204);
    expect(await vm.state()).toBe('running');
  });

  it('pause and resume: PATCH /vm Paused / Resumed, visible in GET /', async () => {
    const spec = await newSpec();
    const vm = await track(driver.spawn(spec));
    await vm.pause();
    expect(await vm.state()).toBe('paused');
    await vm.resume();
    expect(await vm.state()).toBe('running');
    const list = (await calls(spec.id)).slice(-2);
    expectEveryCallAccepted(list);
    expect(list.map((c) => [c.method, c.path, c.body])).toEqual([
      ['PATCH', '/vm', { state: 'Paused' }],
      ['PATCH', '/vm', { state: 'Resumed' }],
    ]);
  });

  it('snapshot: pauses, PUT /snapshot/create Full into the chroot, moves state and memory out; the VM stays paused', async () => {
    const spec = await newSpec();
    const memoryPath = join(base, `${spec.id}-memory`);
    const vm = await track(driver.spawn({ ...spec, memoryFile: { path: memoryPath, share: true } }));
    const statePath = join(base, `${spec.id}-state`);
    const result = await vm.snapshot(statePath);
    const list = (await calls(spec.id)).slice(-2);
    expectEveryCallAccepted(list);
    expect(list.map((c) => [c.method, c.path, c.body])).toEqual([
      ['PATCH', '/vm', { state: 'Paused' }],
      ['PUT', '/snapshot/create', { snapshot_type: 'Full', snapshot_path: '/snapshot.vmstate', mem_file_path: '/snapshot.memory' }],
    ]);
    expect(await readFile(statePath, 'utf8')).toBe('fake vmstate (Full)\n');
    expect(result).toMatchObject({ statePath, stateBytes: (await stat(statePath)).size });
    expect((await stat(memoryPath)).size).toBe(256 * 1024 * 1024);
    expect(await vm.state()).toBe('paused');
  });

  it('snapshot failure: a 400 from PUT /snapshot/create is a VmSnapshotError naming the fault; nothing is left in place', async () => {
    const spec = await newSpec();
    await control(spec.id, { failAt: 'PUT /snapshot/create' });
    const vm = await track(driver.spawn(spec));
    const statePath = join(base, `${spec.id}-state`);
    const error = await vm.snapshot(statePath).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VmSnapshotError);
    expect((error as Error).message).toContain('fake: injected failure at PUT /snapshot/create');
    expect(existsSync(statePath)).toBe(false);
  });

  (WORKER_BUILT ? describe : describe.skip)('with the real UFFD worker (apps/host-agent/uffd-worker/build/kiln-uffd-worker)', () => {
    it('restore: starts the worker, PUT /snapshot/load with a Uffd backend at its socket in the chroot, then PATCH /vm Resumed', async () => {
      const spec = await newSpec();
      const statePath = await templateSnapshot(`${spec.id}-snap`);
      const vm = await track(driver.restore({ ...spec, memoryFile: { path: join(base, `${spec.id}-snap`, 'memory'), share: false } }, { statePath }));
      const list = await calls(spec.id);
      expectEveryCallAccepted(list);
      // Nothing is configured before the load: Firecracker refuses a load after boot-specific resources.
      expect(callNames(list)).toEqual(['PUT /snapshot/load', 'PATCH /vm']);
      expect(list[0].body).toEqual({
        snapshot_path: '/restore.vmstate',
        mem_backend: { backend_type: 'Uffd', backend_path: '/uffd.sock' },
        track_dirty_pages: true,
        resume_vm: false,
        network_overrides: [{ iface_id: 'eth0', host_dev_name: 'tap0' }],
      });
      // When the load arrived, backend_path was a listening unix socket (the worker's), not a file.
      expect(list[0].backendIsSocket).toBe(true);
      expect(list[1].body).toEqual({ state: 'Resumed' });
      expect(await vm.state()).toBe('running');
      const worker = supervisor.workers().find((w) => w.socketPath.endsWith('/uffd.sock') && w.socketPath.includes(`/${jailerIdFor(spec.id)}/`));
      expect(worker).toBeDefined();
      expect((await worker!.stats()).state).toBe('waiting');
      // The worker lives as long as the VM.
      await vm.kill();
      await worker!.exited;
      expect(existsSync(worker!.socketPath)).toBe(false);
    });

    it('prepareRestore: the VMM and worker wait; start() loads and resumes; state() says restoring only during the load', async () => {
      const spec = await newSpec();
      const statePath = await templateSnapshot(`${spec.id}-snap`);
      const prepared = await driver.prepareRestore({ ...spec, network: undefined, memoryFile: { path: join(base, `${spec.id}-snap`, 'memory'), share: false } }, { statePath });
      handles.push(prepared.handle);
      expect(await calls(spec.id)).toEqual([]);
      const vm = await prepared.start();
      expect(callNames(await calls(spec.id))).toEqual(['PUT /snapshot/load', 'PATCH /vm']);
      expect((await calls(spec.id))[0].body).not.toHaveProperty('network_overrides');
      expect(await vm.state()).toBe('running');
    });

    /** What the fake writes for a dirtied page (fake-firecracker.cjs diffPageBytes): `fill` repeated, the page number first; 0 = zeros. */
    function dirtiedPage(page: number, fill: number): Buffer {
      const bytes = Buffer.alloc(4096, fill);
      if (fill !== 0) bytes.writeUInt32LE(page, 0);
      return bytes;
    }

    /** The checkpoint's memory.pages must be `expected`'s pages in ascending order, its index `runs`; sha256s and counts match. */
    async function expectChangedMemory(checkpoint: VmCheckpoint, expected: Map<number, Buffer>, runs: Array<[number, number]>): Promise<void> {
      const pages = await readFile(checkpoint.changedMemory.pagesPath);
      const index = await readFile(checkpoint.changedMemory.indexPath);
      const order = [...expected.keys()].sort((a, b) => a - b);
      expect(pages.equals(Buffer.concat(order.map((page) => expected.get(page)!)))).toBe(true);
      const indexRuns: Array<[number, number]> = [];
      for (let at = 0; at < index.length; at += 8) indexRuns.push([index.readUInt32LE(at), index.readUInt32LE(at + 4)]);
      expect(indexRuns).toEqual(runs);
      expect(checkpoint.changedMemory).toMatchObject({ pages: order.length, bytes: order.length * 4096, runs: runs.length, indexBytes: runs.length * 8 });
      const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');
      expect(checkpoint.sha256).toEqual({ state: sha(await readFile(checkpoint.statePath)), pages: sha(pages), index: sha(index) });
    }

    it('checkpoint: PUT /snapshot/create Diff of a clone restored from a template; memory.pages/.index are its dirtied pages byte for byte', async () => {
      const spec = await newSpec();
      // Two Diffs: the second (after a resume) lists only what was dirtied since the first, as Firecracker's does.
      await control(spec.id, {
        diffWrites: [
          [[0, 0x11], [1, 0x11], [5, 0], [200, 0x22]],
          [[1, 0x33], [2, 0x33], [201, 0x44]],
        ],
      });
      const statePath = await templateSnapshot(`${spec.id}-snap`);
      const vm = await track(driver.restore({ ...spec, memoryFile: { path: join(base, `${spec.id}-snap`, 'memory'), share: false } }, { statePath }));
      const dir = join(base, `${spec.id}-checkpoint`);
      await mkdir(dir);
      const checkpoint = await vm.checkpoint(dir);
      const list = (await calls(spec.id)).slice(-2);
      expectEveryCallAccepted(list);
      expect(list.map((c) => [c.method, c.path, c.body])).toEqual([
        ['PATCH', '/vm', { state: 'Paused' }],
        ['PUT', '/snapshot/create', { snapshot_type: 'Diff', snapshot_path: '/snapshot.vmstate', mem_file_path: '/snapshot.memory' }],
      ]);
      expect(checkpoint.statePath).toBe(join(dir, 'device-state'));
      expect(await readFile(checkpoint.statePath, 'utf8')).toBe('fake vmstate (Diff)\n');
      expect(checkpoint.stateBytes).toBe('fake vmstate (Diff)\n'.length);
      expect(checkpoint.changedMemory).toMatchObject({ pagesPath: join(dir, 'memory.pages'), indexPath: join(dir, 'memory.index') });
      // Page 5 was zeroed by the guest: written zeros in the Diff, kept (a hole would have been dropped).
      await expectChangedMemory(
        checkpoint,
        new Map([[0, dirtiedPage(0, 0x11)], [1, dirtiedPage(1, 0x11)], [5, dirtiedPage(5, 0)], [200, dirtiedPage(200, 0x22)]]),
        [[0, 2], [5, 1], [200, 1]],
      );
      for (const value of [checkpoint.durationMs, ...Object.values(checkpoint.timings)]) expect(value).toBeGreaterThanOrEqual(0);
      // Only the checkpoint's files in the dir; Firecracker's snapshot files are gone from the jail.
      expect((await readdir(dir)).sort()).toEqual(['device-state', 'memory.index', 'memory.pages']);
      const jailRoot = join(chrootBase, 'fake-firecracker.cjs', jailerIdFor(spec.id), 'root');
      expect(existsSync(join(jailRoot, 'snapshot.memory')) || existsSync(join(jailRoot, 'snapshot.vmstate'))).toBe(false);
      expect(await vm.state()).toBe('paused');

      // Resumed and checkpointed again: the first checkpoint's pages merged with the second Diff's, the Diff winning.
      await vm.resume();
      const dir2 = join(base, `${spec.id}-checkpoint-2`);
      await mkdir(dir2);
      // The first checkpoint's directory may be collected meanwhile (a fork's is): its pages must not be needed.
      await rm(dir, { recursive: true });
      const second = await vm.checkpoint(dir2);
      await expectChangedMemory(
        second,
        new Map([
          [0, dirtiedPage(0, 0x11)],
          [1, dirtiedPage(1, 0x33)],
          [2, dirtiedPage(2, 0x33)],
          [5, dirtiedPage(5, 0)],
          [200, dirtiedPage(200, 0x22)],
          [201, dirtiedPage(201, 0x44)],
        ]),
        [[0, 3], [5, 1], [200, 2]],
      );
    });

    it('checkpoint of a clone restored from a checkpoint: its pages merged with the Diff (Diff wins), byte for byte', async () => {
      const spec = await newSpec();
      await control(spec.id, { diffWrites: [[[3, 0x55], [4, 0x55], [100, 0x66]]] });
      // The checkpoint restored from: pages 2..4 and 99 over the template's memory (served by the real worker).
      await templateSnapshot(`${spec.id}-snap`);
      const memoryPath = join(base, `${spec.id}-snap`, 'memory');
      const from = join(base, `${spec.id}-from`);
      await mkdir(from);
      const restoredPages = new Map([2, 3, 4, 99].map((page) => [page, dirtiedPage(page, 0x77)] as [number, Buffer]));
      const fromPages = Buffer.concat([2, 3, 4, 99].map((page) => restoredPages.get(page)!));
      const fromIndex = Buffer.alloc(16);
      fromIndex.writeUInt32LE(2, 0);
      fromIndex.writeUInt32LE(3, 4);
      fromIndex.writeUInt32LE(99, 8);
      fromIndex.writeUInt32LE(1, 12);
      await writeFile(join(from, 'memory.pages'), fromPages);
      await writeFile(join(from, 'memory.index'), fromIndex);
      await writeFile(join(from, 'device-state'), 'firecracker vmstate\n');
      const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');
      const pagesEntry = { bytes: fromPages.length, sha256: sha(fromPages) };
      const indexEntry = { bytes: fromIndex.length, sha256: sha(fromIndex) };
      await writeFile(
        join(from, 'manifest.json'),
        JSON.stringify({
          formatVersion: 1,
          kind: 'fork',
          keepMemory: true,
          vm: { memoryMib: 1, memoryFilePath: memoryPath, memoryFileIdentity: sha(await readFile(memoryPath)) },
          // Keyed by file role, as checkpoint-store writes them (CHECKPOINT_FILES).
          files: { 'memory.pages': pagesEntry, 'memory.index': indexEntry },
        }),
      );
      const vm = await track(
        driver.restore(
          { ...spec, memoryFile: { path: memoryPath, share: false } },
          { statePath: join(from, 'device-state'), changedMemory: { pagesPath: join(from, 'memory.pages'), indexPath: join(from, 'memory.index') } },
        ),
      );
      const dir = join(base, `${spec.id}-checkpoint`);
      await mkdir(dir);
      const checkpoint = await vm.checkpoint(dir);
      await expectChangedMemory(
        checkpoint,
        new Map([
          [2, restoredPages.get(2)!],
          [3, dirtiedPage(3, 0x55)],
          [4, dirtiedPage(4, 0x55)],
          [99, restoredPages.get(99)!],
          [100, dirtiedPage(100, 0x66)],
        ]),
        [[2, 3], [99, 2]],
      );
    });

    it('checkpoint failing after Firecracker wrote the Diff: the clone refuses later checkpoints (its dirty log is spent)', async () => {
      const spec = await newSpec();
      const statePath = await templateSnapshot(`${spec.id}-snap`);
      const vm = await track(driver.restore({ ...spec, memoryFile: { path: join(base, `${spec.id}-snap`, 'memory'), share: false } }, { statePath }));
      const dir = join(base, `${spec.id}-checkpoint`);
      await mkdir(dir);
      // Something already at memory.pages: the conversion refuses to overwrite it (and leaves it as it was).
      await writeFile(join(dir, 'memory.pages'), 'not the checkpoint');
      const error = await vm.checkpoint(dir).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(VmSnapshotError);
      expect(await readFile(join(dir, 'memory.pages'), 'utf8')).toBe('not the checkpoint');
      expect(existsSync(join(dir, 'device-state'))).toBe(false);
      const creates = async () => (await calls(spec.id)).filter((c) => c.path === '/snapshot/create').length;
      expect(await creates()).toBe(1);
      const dir2 = join(base, `${spec.id}-checkpoint-2`);
      await mkdir(dir2);
      const refused = await vm.checkpoint(dir2).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(FirecrackerCheckpointBaseLostError);
      expect((refused as Error).message).toMatch(/failed after Firecracker wrote it/);
      expect(await creates()).toBe(1);
    });

    it.each(['PUT /snapshot/load', 'PATCH /vm'])('restore error: a 400 at %s kills the VMM and stops the worker', async (step) => {
      const spec = await newSpec();
      await control(spec.id, { failAt: step });
      const statePath = await templateSnapshot(`${spec.id}-snap`);
      const error = await driver.restore({ ...spec, memoryFile: { path: join(base, `${spec.id}-snap`, 'memory'), share: false } }, { statePath }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(FirecrackerStartError);
      const cause = (error as FirecrackerStartError).cause as FirecrackerApiError;
      expect(cause).toBeInstanceOf(FirecrackerApiError);
      expect([cause.status, cause.faultMessage]).toEqual([400, `fake: injected failure at ${step}`]);
      await expectVmmGone(spec.id);
      expect(supervisor.workers().filter((w) => w.socketPath.includes(`/${jailerIdFor(spec.id)}/`))).toEqual([]);
    });

    describe('after an agent restart: the restoring agent is a separate process whose process group is SIGKILLed, a second driver with its own supervisor takes over', () => {
      let owner: ReapedOwner<{ vmPids: number[] }>;
      const restored: VmSpec[] = [];
      /** vm.json as the first agent wrote it (the fields these tests read). */
      const runtimeRecord = async (spec: VmSpec) =>
        JSON.parse(await readFile(join(spec.stateDir, 'vm.json'), 'utf8')) as { pid: number; processStartTicks: string; uffdWorker?: UffdWorkerRecord };

      beforeAll(async () => {
        const bundle = join(base, 'firecracker-owner.js');
        await bundleOwner(join(__dirname, 'firecracker-owner-process.ts'), bundle);
        const restores: Array<{ spec: VmSpec; snapshot: { statePath: string } }> = [];
        for (let i = 0; i < 2; i++) {
          const spec = await newSpec();
          const statePath = await templateSnapshot(`${spec.id}-snap`);
          restored.push({ ...spec, memoryFile: { path: join(base, `${spec.id}-snap`, 'memory'), share: false } });
          restores.push({ spec: restored[i], snapshot: { statePath } });
        }
        owner = await startReapedOwner(bundle, [JSON.stringify({ dataDir: base, firecracker: config.firecracker, uffdWorkerBinary: config.uffdWorkerBinary, restores })]);
        await owner.killGroup();
      });

      afterAll(async () => {
        // Whatever a failed case left running goes; the subreaper stays until it has reaped it.
        for (const spec of restored) {
          const record = await runtimeRecord(spec).catch(() => undefined);
          for (const [pid, ticks] of [[record?.pid, record?.processStartTicks], [record?.uffdWorker?.pid, record?.uffdWorker?.processStartTicks]]) {
            if (pid === undefined || (await processStartTicks(pid as number)) !== ticks) continue;
            process.kill(pid as number, 'SIGKILL');
            await waitFor(() => !existsSync(`/proc/${pid}`));
          }
        }
        await owner?.stopReaper();
      });

      it('contract (fake Firecracker, real worker): the VM and its worker outlived the agent; adopt() takes over the worker recorded in vm.json (the running pid), the new supervisor lists it, and a kill through the adopted handle ends the worker and leaves no sockets', async () => {
        const spec = restored[0];
        const record = await runtimeRecord(spec);
        expect(record.pid).toBe(owner.started.vmPids[0]);
        const worker = record.uffdWorker!;
        expect(worker).toEqual({
          pid: expect.any(Number),
          processStartTicks: expect.stringMatching(/^\d+$/),
          socketPath: join(chrootBase, 'fake-firecracker.cjs', jailerIdFor(spec.id), 'root', 'uffd.sock'),
          statsSocketPath: join(spec.stateDir, 'uffd-stats.sock'),
        });
        // Both survived the SIGKILL of the first agent's group: the same processes as recorded.
        expect(await processStartTicks(record.pid)).toBe(record.processStartTicks);
        expect(await processStartTicks(worker.pid)).toBe(worker.processStartTicks);
        expect((await readFile(`/proc/${worker.pid}/cmdline`, 'utf8')).split('\0')[0]).toBe(config.uffdWorkerBinary);

        const secondSupervisor = new UffdWorkerSupervisor(config.uffdWorkerBinary);
        const secondDriver = new FirecrackerDriver(config, secondSupervisor);
        const vm = await secondDriver.adopt(spec.stateDir);
        expect(vm.pid).toBe(record.pid);
        expect(await vm.state()).toBe('running');
        const adoptedWorkers = secondSupervisor.workers();
        expect(adoptedWorkers.map((w) => [w.pid, w.socketPath, w.statsSocketPath])).toEqual([[worker.pid, worker.socketPath, worker.statsSocketPath]]);
        expect((await adoptedWorkers[0].stats()).state).toBe('waiting');

        await vm.kill();
        // The worker lives as long as the VM, adopted or not.
        await waitFor(async () => (await processStartTicks(worker.pid)) === undefined);
        await waitFor(() => secondSupervisor.workers().length === 0);
        expect(await adoptedWorkers[0].exited).toEqual({ code: null, signal: null, statusUnknown: true });
        expect(existsSync(worker.socketPath)).toBe(false);
        expect(existsSync(worker.statsSocketPath)).toBe(false);
        await waitFor(() => !existsSync(join(chrootBase, 'fake-firecracker.cjs', jailerIdFor(spec.id))));
      });

      it('contract (fake Firecracker, real worker): terminate(stateDir) of such a VM also stops its recorded worker, which no handshake ever reached and so would wait for ever', async () => {
        const spec = restored[1];
        const record = await runtimeRecord(spec);
        const worker = record.uffdWorker!;
        // Still there: the fake never connects to the worker, so the VMM's death would not end it.
        expect(await processStartTicks(worker.pid)).toBe(worker.processStartTicks);
        const secondSupervisor = new UffdWorkerSupervisor(config.uffdWorkerBinary);
        expect(await new FirecrackerDriver(config, secondSupervisor).terminate(spec.stateDir)).toBe(true);
        expect(await processStartTicks(record.pid)).toBeUndefined();
        expect(await processStartTicks(worker.pid)).toBeUndefined();
        expect(secondSupervisor.workers()).toEqual([]);
        expect(existsSync(worker.socketPath)).toBe(false);
        expect(existsSync(worker.statsSocketPath)).toBe(false);
      });
    });

    it('restore refused by the worker (wrong sha256): UffdWorkerStartError with its one line, no VMM is started', async () => {
      const spec = await newSpec();
      const statePath = await templateSnapshot(`${spec.id}-snap`, { corruptSha: true });
      const error = await driver.restore({ ...spec, memoryFile: { path: join(base, `${spec.id}-snap`, 'memory'), share: false } }, { statePath }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(UffdWorkerStartError);
      expect((error as UffdWorkerStartError).workerReason).toMatch(/sha256/);
      expect(await records(spec.id)).toEqual([]);
      expect(existsSync(join(chrootBase, 'fake-firecracker.cjs', jailerIdFor(spec.id)))).toBe(false);
    });
  });

  it('kill: SIGKILL ends the VMM; exited settles once; the jail is removed', async () => {
    const spec = await newSpec();
    const vm = await driver.spawn(spec);
    const ticks = await processStartTicks(vm.pid);
    expect(ticks).toBeDefined();
    const exit = await vm.kill();
    expect(exit.signal).toBe('SIGKILL');
    expect(vm.hasExited).toBe(true);
    expect(await processStartTicks(vm.pid)).toBeUndefined();
    await waitFor(() => !existsSync(join(chrootBase, 'fake-firecracker.cjs', jailerIdFor(spec.id))));
    await expect(vm.pause()).rejects.toThrow(/has exited/);
  });

  it('stop: SendCtrlAltDel, and Firecracker exits by itself', async () => {
    const spec = await newSpec();
    const vm = await driver.spawn(spec);
    const exit = await vm.stop(5_000);
    expect(exit).toMatchObject({ code: 0, reason: 'process-exit' });
    expect((await calls(spec.id)).slice(-1)[0]).toMatchObject({ method: 'PUT', path: '/actions', body: { action_type: 'SendCtrlAltDel' }, status: 204 });
  });

  it('adopt and terminate: a detached VM is re-attached from its state dir, then terminated by pid and start time', async () => {
    const spec = await newSpec();
    const vm = await driver.spawn(spec);
    vm.detach();
    const adopted = await driver.adopt(spec.stateDir);
    expect(adopted.pid).toBe(vm.pid);
    expect(await adopted.state()).toBe('running');
    adopted.detach();
    expect(await driver.terminate(spec.stateDir)).toBe(true);
    expect(await processStartTicks(vm.pid)).toBeUndefined();
    // Gone now: nothing left to terminate or adopt.
    expect(await driver.terminate(spec.stateDir)).toBe(false);
    await expect(driver.adopt(spec.stateDir)).rejects.toThrow(/no longer running/);
  });

  it.each(['PUT /machine-config', 'PUT /boot-source', 'PUT /drives/rootfs', 'PUT /network-interfaces/eth0', 'PUT /actions'])(
    'create error: a 400 at %s is a FirecrackerStartError carrying the API fault, and the VMM is killed',
    async (step) => {
      const spec = await newSpec();
      await control(spec.id, { failAt: step });
      const error = await driver.spawn(spec).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(FirecrackerStartError);
      const cause = (error as FirecrackerStartError).cause as FirecrackerApiError;
      expect(cause).toBeInstanceOf(FirecrackerApiError);
      expect([cause.method + ' ' + cause.path, cause.status, cause.faultMessage]).toEqual([step, 400, `fake: injected failure at ${step}`]);
      // The calls before the failing one were made and accepted; none after it.
      const list = await calls(spec.id);
      expect(callNames(list).slice(-1)).toEqual([step]);
      expectEveryCallAccepted(list.slice(0, -1));
      await expectVmmGone(spec.id);
    },
  );

  it('create error: an API socket that never appears is a timeout, and the VMM is killed', async () => {
    const spec = await newSpec();
    await control(spec.id, { noSocket: true });
    const error = await driver.spawn(spec, { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FirecrackerStartError);
    expect((error as FirecrackerStartError).cause).toBeInstanceOf(FirecrackerConnectionError);
    expect((error as Error).message).toMatch(/not ready after 300 ms/);
    await expectVmmGone(spec.id);
  });

  it("create error: a VMM that exits early fails the start at once, with its last words", async () => {
    const spec = await newSpec();
    await control(spec.id, { exitEarly: true });
    const started = Date.now();
    const error = await driver.spawn(spec, { timeoutMs: 20_000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FirecrackerStartError);
    expect((error as Error).message).toMatch(/exited before its API socket was ready/);
    expect((error as Error).message).toContain('fake-firecracker: injected early exit');
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('a VM id with an underscore gets a jailer id the jailer accepts (the fake jailer refuses the raw one)', async () => {
    const spec = await newSpec();
    const id = `${spec.id}_x`;
    const vm = await track(driver.spawn({ ...spec, id, stateDir: `${spec.stateDir}-x` }));
    const jailerId = jailerIdFor(id);
    // VmCgroups' group name for the VM (vm-<VM id>), the underscore made a hyphen plus a hash of the VM id.
    expect(jailerId).toMatch(/^vm-vm-\d+-x-[0-9a-f]{8}$/);
    const [jailer] = await records(id);
    expect(jailer.argv?.slice(0, 2)).toEqual(['--id', jailerId]);
    expect(await vm.state()).toBe('running');
    // Control: the fake jailer really checks ids, so the mapping above is what made the start work.
    const refused = spawnSync(process.execPath, [FAKE_JAILER, '--id', id, '--exec-file', FAKE_FIRECRACKER, '--uid', '0', '--gid', '0', '--chroot-base-dir', chrootBase], { encoding: 'utf8' });
    expect(refused.status).toBe(1);
    expect(refused.stderr).toBe(`jailer: invalid --id ${id}: letters, digits and hyphens, 1-64 characters\n`);
  });

  it.each<[string, (spec: VmSpec) => VmSpec, RegExp]>([
    ['a qcow2 disk', (s) => ({ ...s, rootDisk: { ...s.rootDisk, format: 'qcow2' } }), /rootDisk.format must be raw/],
    ['33 vCPUs', (s) => ({ ...s, vcpus: 33 }), /vcpus must be an integer in 1..32/],
    ['TCG', (s) => ({ ...s, accelerator: 'tcg' }), /KVM only/],
    ['a bad MAC', (s) => ({ ...s, network: { ...s.network!, guestMac: 'nope' } }), /guestMac/],
    ['a missing disk', (s) => ({ ...s, rootDisk: { ...s.rootDisk, path: '/nonexistent/disk.raw' } }), /root disk \/nonexistent\/disk.raw does not exist/],
  ])('invalid spec (%s): InvalidVmSpecError before any jailer runs', async (_what, change, message) => {
    const spec = change(await newSpec());
    await expect(driver.spawn(spec)).rejects.toThrow(InvalidVmSpecError);
    await expect(driver.spawn(spec)).rejects.toThrow(message);
    expect(await records(spec.id)).toEqual([]);
  });

  async function expectVmmGone(id: string): Promise<void> {
    const pid = (await records(id)).find((r) => r.who === 'jailer')?.pid;
    expect(pid).toBeDefined();
    await waitFor(async () => (await processStartTicks(pid!)) === undefined);
    await waitFor(() => !existsSync(join(chrootBase, 'fake-firecracker.cjs', jailerIdFor(id))));
  }
});

function rawCall(socketPath: string, method: string, path: string, body: unknown): Promise<{ status: number; fault?: string }> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) } }, (res) => {
      let text = '';
      res.on('data', (chunk: Buffer) => (text += chunk.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, fault: text ? (JSON.parse(text) as { fault_message?: string }).fault_message : undefined }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
