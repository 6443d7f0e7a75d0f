import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { access, chown, copyFile, mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Inject, Injectable, Logger, Optional } from '@nestjs/common';
import { VmCgroups } from '../../cgroup';
import { linkOrCopy, sha256File, syncFileData } from '../../file-integrity';
import { UffdWorkerAdoptError, UffdWorkerSupervisor, type UffdWorkerProcess, type UffdWorkerRecord } from '../uffd';
import { VmmConfig } from '../vmm.config';
import { processStartTicks, VmmIdentityLeases, type VmmIdentity } from '../vmm-identities';
import {
  BACKGROUND_NICE,
  DEFAULT_START_TIMEOUT_MS,
  delay,
  fileTail,
  killGroupOrProcess,
  VmmProcessHandle,
  writeFileAtomic,
} from '../vmm-process';
import { InvalidVmSpecError, VmAdoptError, VmNotRunningError, VmSnapshotError, VmStartError } from '../vmm.errors';
import type {
  PreparedRestore,
  VmCheckpoint,
  VmExit,
  VmHandle,
  VmmDriver,
  VmRunState,
  VmSnapshotRef,
  VmSnapshotResult,
  VmSpec,
  VmStartOptions,
} from '../vmm-driver';
import { FirecrackerApiClient } from './firecracker-api.client';
import { buildJailerArgs, CHROOT_FILES, jailDirFor, jailerIdFor, type JailerCgroup } from './firecracker-jailer';
import { ChangedPagesBase } from './changed-pages-base';
import { changedPagesFromDiff } from './diff-memory';
import { FirecrackerCheckpointBaseLostError, FirecrackerConnectionError, FirecrackerStartError } from './firecracker.errors';

/** What adopt() and terminate() need to find and trust a VM again; written to the VM's state dir. */
interface FirecrackerRuntimeRecord {
  driver: 'firecracker';
  pid: number;
  /** Field 22 of /proc/<pid>/stat: tells a live VMM from an unrelated process that reused the pid. */
  processStartTicks: string;
  identity: VmmIdentity;
  jailerId: string;
  jailDir: string;
  apiSocketPath: string;
  spec: VmSpec;
  startedAt: string;
  /** A restore's UFFD worker: it outlives the agent like the VMM, and adopt() takes it over with the VM. */
  uffdWorker?: UffdWorkerRecord;
}

const STATE_FILES = { runtime: 'vm.json', vmmLog: 'firecracker.log', uffdStats: 'uffd-stats.sock' } as const;

/** The checkpoint's file names (checkpoint-store's CHECKPOINT_FILES). */
const CHECKPOINT_FILE = { deviceState: 'device-state', memoryPages: 'memory.pages', memoryIndex: 'memory.index' } as const;

/** The drive and interface ids Kiln gives every Firecracker VM (snapshots restore them by these ids). */
const ROOT_DRIVE_ID = 'rootfs';
const NET_IFACE_ID = 'eth0';




const MAX_UNIX_SOCKET_PATH = 107;
const VM_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const INTERFACE_NAME = /^[A-Za-z0-9_.-]{1,15}$/;
/** Firecracker's MachineConfiguration.vcpu_count range. */
const MAX_VCPUS = 32;

/**
 * Runs each VM as Firecracker under its jailer: a uid/gid of its own (the VmmIdentities range), a chroot holding
 * only what the VM needs (kernel, disk, the restore's device state, the UFFD worker's socket), the slot's network
 * namespace, and a cgroup the jailer creates with the VM's limits (VmCgroups' group for the VM: the jailer id is its
 * name, the parent VmCgroups' own; released when the VMM exits). Configured over Firecracker's REST API on the
 * unix socket in the chroot. A restore's guest memory is served lazily by a UFFD worker (PUT /snapshot/load with a
 * Uffd memory backend), which outlives the agent like the VMM and is adopted with it (vm.json records both). The
 * jailer execs Firecracker in place (no --daemonize, no --new-pid-ns): the pid spawned here is Firecracker's own,
 * leading its own process group.
 */
@Injectable()
export class FirecrackerDriver implements VmmDriver {
  readonly name = 'firecracker';
  private readonly logger = new Logger(FirecrackerDriver.name);
  private readonly identities: VmmIdentityLeases | undefined;

  constructor(
    @Inject(VmmConfig) private readonly config: VmmConfig,
    @Inject(UffdWorkerSupervisor) private readonly uffdWorkers: UffdWorkerSupervisor,
    // Absent (tools, contract tests): the jailer creates no cgroup.
    @Optional() @Inject(VmCgroups) private readonly cgroups?: VmCgroups,
  ) {
    const uids = config.vmmUids;
    this.identities = uids && new VmmIdentityLeases(join(config.dataDir, 'vmm', 'uid-leases'), uids.base, uids.count);
  }

  async spawn(spec: VmSpec, options: VmStartOptions = {}): Promise<VmHandle> {
    return (await this.startProcess(spec, undefined, options)).complete(false);
  }

  async restore(spec: VmSpec, snapshot: VmSnapshotRef, options: VmStartOptions = {}): Promise<VmHandle> {
    return (await this.startProcess(spec, snapshot, options)).complete(false);
  }

  async prepareRestore(spec: VmSpec, snapshot: VmSnapshotRef, options: VmStartOptions = {}): Promise<PreparedRestore> {
    const started = await this.startProcess(spec, snapshot, options);
    return { handle: started.handle, start: () => started.complete(true) };
  }

  async adopt(stateDir: string): Promise<VmHandle> {
    let record: FirecrackerRuntimeRecord;
    try {
      record = await readRuntimeRecord(stateDir);
    } catch (error) {
      throw new VmAdoptError(`no VM record in ${stateDir}: ${(error as Error).message}`);
    }
    const ticks = await processStartTicks(record.pid);
    if (ticks === undefined || ticks !== record.processStartTicks) {
      // A worker still waiting for this VM (one that never connected does not notice it is gone) serves nobody.
      await this.stopRecordedWorker(record);
      throw new VmAdoptError(`VM ${record.spec.id} (pid ${record.pid}) is no longer running`);
    }
    const api = new FirecrackerApiClient(record.apiSocketPath);
    try {
      await api.getInstanceInfo();
    } catch (error) {
      throw new VmAdoptError(`VM ${record.spec.id}: its API socket does not answer: ${(error as Error).message}`);
    }
    const worker = record.uffdWorker && (await this.adoptWorker(record.spec.id, record.uffdWorker));
    const handle = new FirecrackerVmHandle(record.spec, record.pid, api, record.jailDir, stateDir, undefined, worker);
    handle.watchAdoptedProcess(record.processStartTicks);
    // The jailer made the VM's group for this pid: only this pid's exit removes it.
    this.cgroups?.recordGroupOwner(record.jailerId, record.pid);
    void handle.exited.then(() => this.cleanUp(record));
    return handle;
  }

  async terminate(stateDir: string): Promise<boolean> {
    const record = await readRuntimeRecord(stateDir).catch(() => undefined);
    if (!record) return false;
    const ticks = await processStartTicks(record.pid);
    if (ticks === undefined || ticks !== record.processStartTicks) {
      await this.stopRecordedWorker(record);
      await this.cleanUp(record);
      return false;
    }
    killGroupOrProcess(record.pid);
    for (let waited = 0; waited < 5_000 && (await processStartTicks(record.pid)) === ticks; waited += 10) await delay(10);
    await this.stopRecordedWorker(record);
    await this.cleanUp(record);
    return true;
  }

  /**
   * The worker of an adopted VM. One that is gone is not fatal to the VM: a guest whose pages were all served already
   * runs on, and killing it here would end a VM that may be fine; a guest that touches a page never served blocks
   * that vCPU, as nothing can serve it any more.
   */
  private async adoptWorker(vmId: string, recorded: UffdWorkerRecord): Promise<UffdWorkerProcess | undefined> {
    try {
      return await this.uffdWorkers.adopt(recorded);
    } catch (error) {
      if (!(error instanceof UffdWorkerAdoptError)) throw error;
      this.logger.warn(`vm ${vmId}: adopted without its UFFD worker (${error.message}); a guest page it never served would block the vCPU touching it`);
      return undefined;
    }
  }

  /** Ends the recorded worker of a VM that is gone: it exits by itself when its VMM closes the socket, unless none ever connected. */
  private async stopRecordedWorker(record: FirecrackerRuntimeRecord): Promise<void> {
    if (!record.uffdWorker) return;
    const worker = await this.uffdWorkers.adopt(record.uffdWorker).catch(() => undefined);
    await worker?.stop().catch(() => undefined);
  }

  /**
   * After the VMM is gone: its jail (links and sockets only; the disk's data stays in the CoW layer), its uid lease
   * and the cgroup the jailer made for it (named by the jailer id; a record's own id, so a VM started before the id
   * scheme changed is still found). `pid` is undefined when no jailer ran: then no group was made for this VM, and
   * one of that name is not this VM's to remove. Never throws: it runs on exit paths.
   */
  private async cleanUp(vm: { spec: { id: string }; identity: VmmIdentity; jailDir: string; jailerId: string; pid?: number }): Promise<void> {
    await rm(vm.jailDir, { recursive: true, force: true }).catch(() => undefined);
    if (this.identities) await this.identities.release(vm.identity, vm.spec.id).catch(() => undefined);
    if (vm.pid !== undefined && this.cgroups) await this.cgroups.releaseGroup(vm.jailerId, vm.pid).catch(() => undefined);
  }

  private async jailerCgroup(spec: VmSpec): Promise<JailerCgroup | undefined> {
    if (!this.cgroups) return undefined;
    const version = await this.cgroups.version();
    if (version === 'off') return undefined;
    // Undefined on a v1 host whose agent sits in different groups per controller (VmCgroups warns once).
    const parent = await this.cgroups.jailerParent();
    if (parent === undefined) return undefined;
    const limits = this.cgroups.limitsFor({ vcpus: spec.vcpus, memoryMib: spec.memoryMib, accelerator: 'kvm' });
    return { version, parent, limits };
  }

  /**
   * Builds the VM's chroot, spawns the jailer and waits for Firecracker's API. A restore first starts the UFFD worker
   * (it verifies the snapshot's files before it listens: a bad snapshot fails here, before any VMM runs). complete()
   * then configures and starts the guest (cold boot) or loads the snapshot and resumes it (restore).
   */
  private async startProcess(
    spec: VmSpec,
    snapshot: VmSnapshotRef | undefined,
    options: VmStartOptions,
  ): Promise<{ handle: FirecrackerVmHandle; complete: (prepared: boolean) => Promise<VmHandle> }> {
    const { binary: firecrackerBinary, jailerBinary, chrootBase, kernelPath } = this.config.firecracker;
    const jailerId = jailerIdFor(spec.id);
    const { jailDir, rootDir } = jailDirFor(chrootBase, firecrackerBinary, jailerId);
    validateFirecrackerSpec(spec, rootDir);
    await assertReadable(spec, kernelPath, snapshot);
    const stateDir = spec.stateDir;
    await mkdir(stateDir, { recursive: true });

    // A jail left by an earlier VM of the same id goes first: the jailer reuses an existing directory as it is.
    await rm(jailDir, { recursive: true, force: true });
    await mkdir(rootDir, { recursive: true, mode: 0o755 });
    const identity: VmmIdentity = (await this.identities?.claim(spec.id)) ?? { uid: 0, gid: 0 };
    let worker: UffdWorkerProcess | undefined;
    /** `pid`: the jailer's (= the VMM's) once spawned; its group is released only for it. */
    const abandon = async (pid?: number) => {
      await worker?.stop().catch(() => undefined);
      await this.cleanUp({ spec, identity, jailDir, jailerId, pid });
    };

    let cgroup: JailerCgroup | undefined;
    try {
      // Links, not copies: the disk must be the sandbox's own CoW layer; the kernel and initrd are only read.
      await linkInto(kernelPath, join(rootDir, CHROOT_FILES.kernel), 'copy');
      if (spec.initrdPath) await linkInto(spec.initrdPath, join(rootDir, CHROOT_FILES.initrd), 'copy');
      await linkInto(spec.rootDisk.path, join(rootDir, CHROOT_FILES.rootDisk), 'link');
      if (!spec.rootDisk.readOnly) await chown(join(rootDir, CHROOT_FILES.rootDisk), identity.uid, identity.gid);
      // A new VM starts with no changed pages of its own; a restore from a checkpoint with that checkpoint's.
      await ChangedPagesBase.reset(stateDir, snapshot?.changedMemory);
      if (snapshot) {
        await linkInto(snapshot.statePath, join(rootDir, CHROOT_FILES.restoreState), 'copy');
        const statsSocketPath = join(stateDir, STATE_FILES.uffdStats);
        worker = await this.uffdWorkers.start({
          // The snapshot's directory: a template snapshot (memory + manifest) or a checkpoint (manifest, memory.pages/index).
          snapshotDir: dirname(snapshot.statePath),
          socketPath: join(rootDir, CHROOT_FILES.uffdSocket),
          statsSocketPath,
          timeoutMs: options.timeoutMs,
        });
        // The worker binds its socket 0600 as root; the jailed Firecracker connects as the VM's uid.
        await chown(join(rootDir, CHROOT_FILES.uffdSocket), identity.uid, identity.gid);
      }
      cgroup = await this.jailerCgroup(spec);
    } catch (error) {
      await abandon();
      if (error instanceof VmStartError || error instanceof InvalidVmSpecError) throw error;
      throw new FirecrackerStartError(`vm ${spec.id}: preparing its jail failed: ${(error as Error).message}`, error);
    }

    const jailerArgs = buildJailerArgs({
      jailerId,
      firecrackerBinary,
      uid: identity.uid,
      gid: identity.gid,
      chrootBase,
      netnsPath: spec.network?.netnsPath,
      cgroup,
    });
    const [file, argv] = options.background
      ? ['nice', ['-n', String(BACKGROUND_NICE), jailerBinary, ...jailerArgs]]
      : [jailerBinary, jailerArgs];
    const logPath = join(stateDir, STATE_FILES.vmmLog);
    const logFd = openSync(logPath, 'a');
    let child: ChildProcess;
    const launchedAt = performance.now();
    try {
      child = spawn(file, argv, { detached: true, stdio: ['ignore', logFd, logFd] });
    } catch (error) {
      await abandon();
      throw new FirecrackerStartError(`vm ${spec.id}: spawning the jailer failed: ${(error as Error).message}`, error);
    } finally {
      closeSync(logFd);
    }
    child.unref();

    const exitedEarly = new AbortController();
    const childExit = new Promise<VmExit>((resolve) => {
      child.once('error', (error) => {
        exitedEarly.abort(error.message);
        resolve({ code: null, signal: null, reason: `spawn failed: ${error.message}`, at: new Date() });
      });
      child.once('exit', (code, signal) => {
        exitedEarly.abort(`exited with ${code ?? signal}`);
        resolve({ code, signal, reason: 'process-exit', at: new Date() });
      });
    });
    // The worker, the jail, the uid lease and the cgroup live exactly as long as the VMM.
    void childExit.then(() => abandon(child.pid));

    const timeoutMs = options.timeoutMs ?? DEFAULT_START_TIMEOUT_MS;
    const fail = async (error: unknown): Promise<never> => {
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        try {
          killGroupOrProcess(child.pid);
        } catch {
          /* already gone */
        }
      }
      await Promise.race([childExit, delay(5_000)]);
      await abandon(child.pid);
      const lastWords = (await fileTail(logPath, 600)).split('\n').filter(Boolean).slice(-3).join(' | ');
      throw new FirecrackerStartError(
        `vm ${spec.id}: ${snapshot ? 'restore' : 'boot'} failed: ${(error as Error).message}${lastWords ? ` (firecracker: ${lastWords})` : ''}`,
        error,
      );
    };

    try {
      const pid = await new Promise<number>((resolve, reject) => {
        if (child.pid !== undefined) return resolve(child.pid);
        child.once('spawn', () => resolve(child.pid as number));
        child.once('error', reject);
      });
      // The jailer is creating the VM's group for this pid: an earlier VM's late release must leave it alone.
      this.cgroups?.recordGroupOwner(jailerId, pid);
      if (this.identities) await this.identities.bind(identity, spec.id, pid);
      const apiSocketPath = join(rootDir, CHROOT_FILES.apiSocket);
      const api = await FirecrackerApiClient.connect(apiSocketPath, timeoutMs, exitedEarly.signal);
      const controlReadyMs = performance.now() - launchedAt;
      const vm = new FirecrackerVmHandle(spec, pid, api, jailDir, stateDir, childExit, worker);
      const record: FirecrackerRuntimeRecord = {
        driver: 'firecracker',
        pid,
        processStartTicks: (await processStartTicks(pid)) ?? '',
        identity,
        jailerId,
        jailDir,
        apiSocketPath,
        spec,
        startedAt: new Date().toISOString(),
        uffdWorker: worker && {
          pid: worker.pid,
          processStartTicks: (await processStartTicks(worker.pid)) ?? '',
          socketPath: worker.socketPath,
          statsSocketPath: worker.statsSocketPath,
        },
      };
      await writeFileAtomic(join(stateDir, STATE_FILES.runtime), JSON.stringify(record, null, 2));

      const complete = async (prepared: boolean): Promise<VmHandle> => {
        const since = prepared ? performance.now() : launchedAt;
        try {
          if (snapshot) {
            vm.restoring = true;
            await api.putSnapshotLoad({
              snapshot_path: `/${CHROOT_FILES.restoreState}`,
              mem_backend: { backend_type: 'Uffd', backend_path: `/${CHROOT_FILES.uffdSocket}` },
              // A restored clone may be checkpointed: Diff snapshots need the pages it dirties from here on.
              track_dirty_pages: true,
              resume_vm: false,
              ...(spec.network ? { network_overrides: [{ iface_id: NET_IFACE_ID, host_dev_name: spec.network.tapName }] } : {}),
            });
            vm.restoring = false;
            if (!options.startPaused) await api.patchVm('Resumed');
          } else {
            await configureColdBoot(api, spec);
            await api.putAction('InstanceStart');
            // Firecracker has no "start paused": the vCPUs run from InstanceStart until this pause lands.
            if (options.startPaused) await api.patchVm('Paused');
          }
        } catch (error) {
          return fail(error);
        }
        vm.startTimings = { controlReadyMs, runningMs: performance.now() - since };
        return vm;
      };
      return { handle: vm, complete };
    } catch (error) {
      return fail(error);
    }
  }
}

/** The pre-boot configuration of a cold boot, in the order Firecracker's getting-started guide uses. */
async function configureColdBoot(api: FirecrackerApiClient, spec: VmSpec): Promise<void> {
  await api.putMachineConfig({ vcpu_count: spec.vcpus, mem_size_mib: spec.memoryMib, smt: false, track_dirty_pages: false });
  await api.putBootSource({
    kernel_image_path: `/${CHROOT_FILES.kernel}`,
    boot_args: spec.kernelArgs,
    ...(spec.initrdPath ? { initrd_path: `/${CHROOT_FILES.initrd}` } : {}),
  });
  await api.putDrive({
    drive_id: ROOT_DRIVE_ID,
    is_root_device: true,
    is_read_only: spec.rootDisk.readOnly === true,
    path_on_host: `/${CHROOT_FILES.rootDisk}`,
  });
  if (spec.network) {
    await api.putNetworkInterface({ iface_id: NET_IFACE_ID, host_dev_name: spec.network.tapName, guest_mac: spec.network.guestMac.toLowerCase() });
  }
}

class FirecrackerVmHandle extends VmmProcessHandle<FirecrackerApiClient> implements VmHandle {
  /** Between PUT /snapshot/load and its answer: state() says 'restoring'. */
  restoring = false;

  constructor(
    spec: VmSpec,
    pid: number,
    private readonly api: FirecrackerApiClient,
    private readonly jailDir: string,
    private readonly stateDir: string,
    childExit: Promise<VmExit> | undefined,
    /** Serves a restored VM's guest memory; stopped with the VM. */
    readonly uffdWorker?: UffdWorkerProcess,
  ) {
    super(spec, pid, childExit);
  }

  protected controlChannel(): FirecrackerApiClient {
    return this.api;
  }

  /** x86 guests booted with reboot=k turn Ctrl+Alt+Del into a reboot, on which Firecracker exits. */
  protected requestExit(api: FirecrackerApiClient): Promise<void> {
    return api.putAction('SendCtrlAltDel');
  }

  protected isControlBroken(error: unknown): boolean {
    return error instanceof FirecrackerConnectionError;
  }

  protected override onExited(): void {
    void this.uffdWorker?.stop().catch(() => undefined);
    void rm(join(this.stateDir, STATE_FILES.uffdStats), { force: true });
  }

  private get rootDir(): string {
    return join(this.jailDir, 'root');
  }

  async state(): Promise<VmRunState> {
    if (this.exitInfo) return 'exited';
    if (this.restoring) return 'restoring';
    const { state } = await this.controlled((api) => api.getInstanceInfo());
    if (state === 'Running') return 'running';
    if (state === 'Paused') return 'paused';
    return 'other';
  }

  async pause(): Promise<void> {
    await this.controlled((api) => api.patchVm('Paused'));
  }

  async resume(): Promise<void> {
    await this.controlled((api) => api.patchVm('Resumed'));
  }


  /**
   * A Full snapshot: device state to `statePath`, guest RAM to the VM's memory file when it has one (a template
   * boot keeps RAM there), else next to the state as `<statePath>.memory`. Firecracker writes both inside its chroot;
   * the agent moves them out. The VM stays paused.
   */
  async snapshot(statePath: string): Promise<VmSnapshotResult> {
    const started = performance.now();
    await this.pauseIfRunning();
    const { state, memory } = await this.createSnapshot('Full');
    if (this.spec.memoryFile && !this.spec.memoryFile.share) {
      // Any snapshot restarts Firecracker's dirty log: a later Diff would miss what the guest changed until now.
      await ChangedPagesBase.markLost(this.stateDir, 'a Full snapshot was taken, which restarted the dirty-page log');
    }
    const memoryPath = this.spec.memoryFile?.path ?? `${statePath}.memory`;
    await moveOut(state, statePath);
    await moveOut(memory, memoryPath);
    const { size } = await stat(statePath);
    return { statePath, stateBytes: size, durationMs: performance.now() - started };
  }

  /**
   * A Diff snapshot of a restored clone, in Kiln's checkpoint layout: `device-state` (Firecracker's snapshot file) and
   * `memory.pages` + `memory.index`, the pages the guest changed from its memory file. Firecracker's Diff memory file
   * (sparse: the pages dirtied since the restore or the previous snapshot) is merged onto the pages the clone had
   * changed before that (its restore checkpoint's, then each checkpoint's own result): see diff-memory.ts. The VM
   * stays paused. Once Firecracker has written the Diff its dirty log is spent: if keeping the pages fails after that,
   * the clone refuses later checkpoints (FirecrackerCheckpointBaseLostError) rather than write incomplete ones.
   */
  async checkpoint(dir: string): Promise<VmCheckpoint> {
    const memoryFile = this.spec.memoryFile;
    if (!memoryFile || memoryFile.share) {
      throw new VmSnapshotError(`vm ${this.id}: only a clone (restored from a snapshot) can be checkpointed`);
    }
    const base = await ChangedPagesBase.read(this.stateDir);
    if ('lost' in base) throw new FirecrackerCheckpointBaseLostError(`vm ${this.id} cannot be checkpointed any more: ${base.lost}`);
    const started = performance.now();
    await this.pauseIfRunning();
    const stopped = performance.now();
    const { state, memory } = await this.createSnapshot('Diff');
    const statePath = join(dir, CHECKPOINT_FILE.deviceState);
    const changedMemory = { pagesPath: join(dir, CHECKPOINT_FILE.memoryPages), indexPath: join(dir, CHECKPOINT_FILE.memoryIndex) };
    // What a failure removes: only files this checkpoint wrote (the conversion removes its own partial output).
    const written: string[] = [];
    try {
      await moveOut(state, statePath);
      written.push(statePath);
      const stateSaved = performance.now();
      const [converted, stateBytes, stateSha256] = await Promise.all([
        changedPagesFromDiff({ diffPath: memory, base: base.files, out: changedMemory }),
        stat(statePath).then((s) => s.size),
        sha256File(statePath),
      ]);
      written.push(changedMemory.pagesPath, changedMemory.indexPath);
      const memorySaved = performance.now();
      await Promise.all([statePath, changedMemory.pagesPath, changedMemory.indexPath].map(syncFileData));
      const done = performance.now();
      await ChangedPagesBase.replace(this.stateDir, changedMemory).catch((error: Error) =>
        ChangedPagesBase.markLost(this.stateDir, `keeping checkpoint ${dir}'s pages as the next base failed: ${error.message}`),
      );
      return {
        statePath,
        stateBytes,
        changedMemory: { ...changedMemory, pages: converted.pages, bytes: converted.bytes, runs: converted.runs, indexBytes: converted.indexBytes },
        sha256: { state: stateSha256, pages: converted.pagesSha256, index: converted.indexSha256 },
        durationMs: done - started,
        timings: { stopMs: stopped - started, deviceStateMs: stateSaved - stopped, memoryMs: memorySaved - stateSaved, syncMs: done - memorySaved },
      };
    } catch (error) {
      await ChangedPagesBase.markLost(this.stateDir, `the Diff snapshot into ${dir} failed after Firecracker wrote it: ${(error as Error).message}`).catch(
        () => undefined,
      );
      await Promise.all(written.map((path) => rm(path, { force: true })));
      throw error instanceof VmSnapshotError ? error : new VmSnapshotError(`vm ${this.id}: checkpoint failed: ${(error as Error).message}`);
    } finally {
      await Promise.all([rm(state, { force: true }), rm(memory, { force: true })]);
    }
  }

  private async pauseIfRunning(): Promise<void> {
    const { state } = await this.controlled((api) => api.getInstanceInfo());
    if (state === 'Running') await this.controlled((api) => api.patchVm('Paused'));
  }

  /** PUT /snapshot/create into fresh files in the chroot; returns their host paths. */
  private async createSnapshot(type: 'Full' | 'Diff'): Promise<{ state: string; memory: string }> {
    const state = join(this.rootDir, CHROOT_FILES.snapshotState);
    const memory = join(this.rootDir, CHROOT_FILES.snapshotMemory);
    await Promise.all([rm(state, { force: true }), rm(memory, { force: true })]);
    try {
      await this.controlled((api) =>
        api.putSnapshotCreate({ snapshot_type: type, snapshot_path: `/${CHROOT_FILES.snapshotState}`, mem_file_path: `/${CHROOT_FILES.snapshotMemory}` }),
      );
    } catch (error) {
      await Promise.all([rm(state, { force: true }), rm(memory, { force: true })]);
      if (error instanceof VmNotRunningError) throw error;
      throw new VmSnapshotError(`vm ${this.id}: ${type} snapshot failed: ${(error as Error).message}`);
    }
    return { state, memory };
  }


}

/** What Firecracker and its jailer accept, checked before anything is created. */
export function validateFirecrackerSpec(spec: VmSpec, rootDir: string): void {
  const fail = (message: string): never => {
    throw new InvalidVmSpecError(`vm ${JSON.stringify(spec.id)}: ${message}`);
  };
  if (typeof spec.id !== 'string' || !VM_ID.test(spec.id)) fail('id must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}');
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > MAX_VCPUS) fail(`vcpus must be an integer in 1..${MAX_VCPUS} (Firecracker)`);
  if (!Number.isInteger(spec.memoryMib) || spec.memoryMib < 64 || spec.memoryMib > 1024 * 1024) fail('memoryMib must be an integer of at least 64');
  for (const [name, value] of [
    ['initrdPath', spec.initrdPath],
    ['rootDisk.path', spec.rootDisk?.path],
    ['stateDir', spec.stateDir],
    ['memoryFile.path', spec.memoryFile?.path],
    ['network.netnsPath', spec.network?.netnsPath],
  ] as Array<[string, string | undefined]>) {
    if (value === undefined || (name === 'initrdPath' && value === '')) continue;
    if (typeof value !== 'string' || !isAbsolute(value) || /[\0\n]/.test(value)) fail(`${name} must be an absolute path on one line`);
  }
  if (!spec.rootDisk || typeof spec.rootDisk.path !== 'string') fail('rootDisk.path must be an absolute path');
  if (spec.rootDisk.format !== 'raw') fail(`rootDisk.format must be raw: Firecracker has no ${spec.rootDisk.format} driver`);
  if (typeof spec.kernelArgs !== 'string' || /[\0\n]/.test(spec.kernelArgs)) fail('kernelArgs must be one line');
  if (spec.network) {
    if (!INTERFACE_NAME.test(spec.network.tapName)) fail('network.tapName is not a valid interface name');
    if (!MAC.test(spec.network.guestMac)) fail('network.guestMac must look like 02:fc:00:00:00:06');
  }
  if (spec.accelerator === 'tcg') fail('Firecracker runs on KVM only (accelerator tcg)');
  if (join(rootDir, CHROOT_FILES.apiSocket).length > MAX_UNIX_SOCKET_PATH) fail('KILN_JAILER_CHROOT_BASE is too long for the API socket path');
}

async function assertReadable(spec: VmSpec, kernelPath: string, snapshot: VmSnapshotRef | undefined): Promise<void> {
  const files: Array<[string, string]> = [
    ['kernel (KILN_FIRECRACKER_KERNEL)', kernelPath],
    ['root disk', spec.rootDisk.path],
  ];
  if (spec.initrdPath) files.push(['initrd', spec.initrdPath]);
  if (snapshot) files.push(['snapshot state', snapshot.statePath]);
  if (spec.network) files.push(['network namespace', spec.network.netnsPath]);
  for (const [what, path] of files) {
    try {
      await access(path);
    } catch {
      throw new InvalidVmSpecError(`vm ${spec.id}: ${what} ${path} does not exist`);
    }
  }
}

/**
 * Puts `source` into the chroot at `target`. A hard link shares the inode (the disk must: the guest writes the
 * sandbox's CoW layer); read-only inputs may fall back to a copy across filesystems, the disk may not.
 */
async function linkInto(source: string, target: string, acrossFilesystems: 'copy' | 'link'): Promise<void> {
  await linkOrCopy(source, target, acrossFilesystems === 'link' ? 'refuse' : 'copy').catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'EXDEV') throw error;
    throw new InvalidVmSpecError(`${source} is on another filesystem than the jail ${dirname(target)}: KILN_JAILER_CHROOT_BASE must share KILN_DATA_DIR's filesystem`);
  });
}

/** Moves a file Firecracker wrote in its chroot to where the agent keeps it, owned by root again. */
async function moveOut(source: string, target: string): Promise<void> {
  try {
    await rename(source, target);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error;
    await copyFile(source, target);
    await rm(source, { force: true });
  }
  await chown(target, 0, 0).catch(() => undefined);
}

async function readRuntimeRecord(stateDir: string): Promise<FirecrackerRuntimeRecord> {
  const record = JSON.parse(await readFile(join(stateDir, STATE_FILES.runtime), 'utf8')) as FirecrackerRuntimeRecord;
  if (record.driver !== 'firecracker') throw new Error(`the record is of driver ${String(record.driver)}`);
  return record;
}





