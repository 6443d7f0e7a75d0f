import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { access, chown, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Inject, Injectable, Optional } from '@nestjs/common';
import { VmCgroups, VmCgroupsConfig, type VmCgroupPlacement } from '../cgroup';
import { sha256File, syncFileData } from '../file-integrity';
import { AccelerationProbe } from './acceleration-probe';
import { hostTscKhz } from './host-tsc';
import { applyChangedPages, captureChangedPages, findGuestRamAreas } from './guest-memory-pages';
import { buildQemuArgs, confinementDir, SNAPSHOT_SOCKET_NAME, snapshotSocketPath, validateVmSpec } from './qemu-command-line';
import { parseQemuVersion, readQemuVersionLine, type QemuVersion } from './qemu-version';
import { QmpClient, type QemuRunState } from './qmp-client';
import { VmmConfig } from './vmm.config';
import { processStartTicks, VmmIdentityLeases, type VmmIdentity } from './vmm-identities';
import { prepareConfinementDir, SnapshotReceiver } from './vm-confinement';
import {
  BACKGROUND_NICE,
  DEFAULT_START_TIMEOUT_MS,
  delay,
  fileTail,
  killGroupOrProcess,
  VmmProcessHandle,
  writeFileAtomic,
} from './vmm-process';
import {
  InvalidVmSpecError,
  QmpConnectionError,
  VmAdoptError,
  VmSnapshotError,
  VmStartError,
} from './vmm.errors';
import type {
  PreparedRestore,
  VmExit,
  VmHandle,
  VmmDriver,
  VmCheckpoint,
  VmRunState,
  VmSnapshotRef,
  VmSnapshotResult,
  VmSpec,
  VmStartOptions,
} from './vmm-driver';

/** What adopt() needs to find and trust a VM again; written next to the QMP socket. */
interface VmRuntimeRecord {
  driver: 'qemu-microvm';
  pid: number;
  /** Field 22 of /proc/<pid>/stat: tells a live VMM from an unrelated process that reused the pid. */
  processStartTicks: string;
  /** The uid/gid leased to this VM (absent: QEMU stays root); its exit ends the lease. */
  identity?: VmmIdentity;
  spec: VmSpec;
  startedAt: string;
}

const STATE_FILES = {
  qmpSocket: 'qmp.sock',
  pidFile: 'qemu.pid',
  runtime: 'vm.json',
  vmmLog: 'qemu.log',
} as const;

/** The file a checkpoint's device state is saved to, in the VM's chroot and then in the checkpoint directory. */
const DEVICE_STATE_FILE = 'device-state';
/** fd number of the snapshot stream in the child: 0-2 are stdio. */
const INCOMING_FD = 3;
/** fd numbers of the root disk in an unprivileged child (see QemuLaunchOptions.rootDiskFds). */
const ROOT_DISK_FDS = { readWrite: 4, readOnly: 5 };




/**
 * Runs each VM as a detached QEMU microvm process (own session and process group, so it
 * outlives the agent) controlled over QMP. Exits are noticed from the child's exit (VMs we
 * started), from the QMP socket closing, and for adopted VMs also by polling the pid.
 */
@Injectable()
export class QemuMicrovmDriver implements VmmDriver {
  readonly name = 'qemu-microvm';
  private tscKhz: Promise<number | undefined> | undefined;
  /** Per-VM uids (KILN_VMM_UID_BASE/COUNT); undefined when VMMs stay root. */
  private readonly identities: VmmIdentityLeases | undefined;
  private version: Promise<QemuVersion> | undefined;

  constructor(
    @Inject(VmmConfig) private readonly config: VmmConfig,
    @Inject(AccelerationProbe) private readonly acceleration: AccelerationProbe,
    // A driver built by hand (tools, test harnesses) takes its cgroup settings from the environment, as VmmConfig does.
    @Optional() @Inject(VmCgroups) private readonly cgroups: VmCgroups = new VmCgroups(VmCgroupsConfig.fromEnv()),
  ) {
    const uids = config.vmmUids;
    this.identities = uids && new VmmIdentityLeases(join(config.dataDir, 'vmm', 'uid-leases'), uids.base, uids.count);
  }

  async spawn(spec: VmSpec, options: VmStartOptions = {}): Promise<VmHandle> {
    return (await this.startProcess(spec, undefined, options)).complete(false);
  }

  async restore(spec: VmSpec, snapshot: VmSnapshotRef, options: VmStartOptions = {}): Promise<VmHandle> {
    if (!spec.memoryFile) {
      throw new InvalidVmSpecError(`vm ${spec.id}: restore needs the memory file the snapshot was taken with`);
    }
    return (await this.startProcess(spec, snapshot, options)).complete(false);
  }

  async prepareRestore(spec: VmSpec, snapshot: VmSnapshotRef, options: VmStartOptions = {}): Promise<PreparedRestore> {
    if (!spec.memoryFile) {
      throw new InvalidVmSpecError(`vm ${spec.id}: restore needs the memory file the snapshot was taken with`);
    }
    const started = await this.startProcess(spec, snapshot, options);
    return { handle: started.handle, start: () => started.complete(true) };
  }

  /** Ends the uid lease of a VM whose VMM is gone. */
  private async releaseIdentity(identity: VmmIdentity | undefined, vmId: string): Promise<void> {
    if (identity && this.identities) await this.identities.release(identity, vmId).catch(() => undefined);
  }

  /** The version of KILN_QEMU_BINARY, read once: it decides how some options are spelt. */
  private qemuVersion(): Promise<QemuVersion> {
    this.version ??= readQemuVersionLine(this.config.qemuBinary)
      .then((line) => {
        const version = parseQemuVersion(line);
        if (!version) throw new VmStartError(`${this.config.qemuBinary} --version printed no version: ${JSON.stringify(line)}`);
        return version;
      })
      .catch((error: unknown) => {
        // Not cached: a binary installed later is picked up by the next start.
        this.version = undefined;
        throw error;
      });
    return this.version;
  }

  async terminate(stateDir: string): Promise<boolean> {
    const record = await readRuntimeRecord(stateDir).catch(() => undefined);
    if (!record) return false;
    const ticks = await processStartTicks(record.pid);
    if (ticks === undefined || ticks !== record.processStartTicks) {
      await this.cgroups.release(record.spec.id, record.pid);
      await this.releaseIdentity(record.identity, record.spec.id);
      return false;
    }
    killGroupOrProcess(record.pid);
    for (let waited = 0; waited < 5_000 && (await processStartTicks(record.pid)) === ticks; waited += 10) await delay(10);
    await this.cgroups.release(record.spec.id, record.pid);
    await this.releaseIdentity(record.identity, record.spec.id);
    return true;
  }

  async adopt(stateDir: string): Promise<VmHandle> {
    let record: VmRuntimeRecord;
    try {
      record = await readRuntimeRecord(stateDir);
    } catch (error) {
      throw new VmAdoptError(`no VM record in ${stateDir}: ${(error as Error).message}`);
    }
    const ticks = await processStartTicks(record.pid);
    if (ticks === undefined || ticks !== record.processStartTicks) {
      throw new VmAdoptError(`VM ${record.spec.id} (pid ${record.pid}) is no longer running`);
    }
    let qmp: QmpClient;
    try {
      qmp = await QmpClient.connect(join(stateDir, STATE_FILES.qmpSocket), 5_000);
    } catch (error) {
      throw new VmAdoptError(`VM ${record.spec.id}: cannot attach to its QMP socket: ${(error as Error).message}`);
    }
    const handle = new QemuVmHandle(record.spec, record.pid, qmp, stateDir, undefined, record.identity);
    handle.watchAdoptedProcess(record.processStartTicks);
    // Its lease already names this VMM (bound at start); it ends with the VMM, as for a VM started here.
    void handle.exited.then(() => this.releaseIdentity(record.identity, record.spec.id));
    // Its group (if it was started with one) is still in place; its exit releases it as for a VM started here.
    this.cgroups.adopted(record.spec.id, record.pid);
    void handle.exited.then(() => this.cgroups.release(record.spec.id, record.pid));
    return handle;
  }

  /**
   * Spawns QEMU and attaches QMP. For a restore QEMU then waits (-incoming defer) until
   * complete() feeds it the snapshot; for a cold boot complete() only records the start.
   */
  private async startProcess(
    spec: VmSpec,
    snapshot: VmSnapshotRef | undefined,
    options: VmStartOptions,
  ): Promise<{ handle: VmHandle; complete: (prepared: boolean) => Promise<VmHandle> }> {
    validateVmSpec(spec);
    await assertReadable(spec, snapshot);
    const accelerator = spec.accelerator ?? (await this.acceleration.accelerator());
    const resolvedSpec: VmSpec = { ...spec, accelerator };
    const stateDir = spec.stateDir;
    await mkdir(stateDir, { recursive: true });
    const qmpSocketPath = join(stateDir, STATE_FILES.qmpSocket);
    await rm(qmpSocketPath, { force: true });

    // Only a restore re-opens its disk after QEMU dropped privileges and was chrooted (when the incoming migration
    // completes); a cold boot opens it once, as root, and keeps that fd. (An fd-set image also cannot resolve a
    // relative backing path.)
    const diskByFd = snapshot !== undefined && !spec.rootDisk.readOnly;
    // Every VM is chrooted into a directory of its own, otherwise empty: a clone opens nothing by path once it runs
    // (snapshot and disk arrive on inherited fds), but any VM may be snapshotted or checkpointed, into a socket or a
    // file the agent puts there for it.
    const confineTo = await prepareConfinementDir(stateDir);
    const qemuVersion = await this.qemuVersion();
    const tcgGuestTscKhz = accelerator === 'tcg' ? await (this.tscKhz ??= hostTscKhz()) : undefined;
    // A uid of its own: from here on, every way out before the VMM is spawned ends the lease; after, its exit does.
    const identity = await this.identities?.claim(spec.id);
    const args = buildQemuArgs(resolvedSpec, {
      qemuVersion,
      accelerator,
      tcgTranslationBufferMib: this.config.tcgTranslationBufferMib,
      qmpSocketPath,
      pidFilePath: join(stateDir, STATE_FILES.pidFile),
      incoming: snapshot !== undefined,
      startPaused: options.startPaused,
      tcgGuestTscKhz,
      runAs: identity,
      rootDiskFds: diskByFd ? ROOT_DISK_FDS : undefined,
      confineTo,
    });
    // nice and nsenter exec what follows them, so the pid is QEMU's own. Threads inherit the niceness.
    const inNetns: [string, string[]] = spec.network
      ? ['nsenter', [`--net=${spec.network.netnsPath}`, '--', this.config.qemuBinary, ...args]]
      : [this.config.qemuBinary, args];
    const [file, argv] = options.background ? ['nice', ['-n', String(BACKGROUND_NICE), inNetns[0], ...inNetns[1]]] : inNetns;

    let cgroup: VmCgroupPlacement | undefined;
    try {
      cgroup = await this.cgroups.prepare(spec.id, { vcpus: spec.vcpus, memoryMib: spec.memoryMib, accelerator });
    } catch (error) {
      await this.releaseIdentity(identity, spec.id);
      throw new VmStartError(`vm ${spec.id}: ${(error as Error).message}`);
    }

    const logFd = openSync(join(stateDir, STATE_FILES.vmmLog), 'a');
    const opened: number[] = [];
    const open = (path: string, flags: string) => {
      const fd = openSync(path, flags);
      opened.push(fd);
      return fd;
    };
    let child: ChildProcess;
    const launchedAt = performance.now();
    try {
      // Child fds 3.. (see INCOMING_FD and ROOT_DISK_FDS): the snapshot stream, then the root disk twice.
      const extra: Array<number | 'ignore'> = [snapshot ? open(snapshot.statePath, 'r') : 'ignore'];
      if (diskByFd) extra.push(open(spec.rootDisk.path, 'r+'), open(spec.rootDisk.path, 'r'));
      child = spawn(file, argv, { detached: true, stdio: ['ignore', logFd, logFd, ...extra] });
    } catch (error) {
      await this.releaseIdentity(identity, spec.id);
      throw error;
    } finally {
      closeSync(logFd);
      for (const fd of opened) closeSync(fd);
    }
    child.unref();
    // Straight after the exec, long before QEMU has set up the guest: its RAM and every thread it starts are charged
    // to the VM's group. A failure surfaces below, where the child is killed.
    let cgroupFailure: unknown;
    if (cgroup && child.pid !== undefined) {
      try {
        cgroup.enterSync(child.pid);
      } catch (error) {
        cgroupFailure = error;
      }
    }

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
    // The group lives as long as the VMM process (an adopted VM releases it from adopt()).
    void childExit.then(() => this.cgroups.release(spec.id, child.pid));
    // So does the uid lease (bound to the VMM below, so that it outlives this process with the VMM).
    void childExit.then(() => this.releaseIdentity(identity, spec.id));

    const timeoutMs = options.timeoutMs ?? DEFAULT_START_TIMEOUT_MS;
    const fail = async (error: unknown): Promise<never> => {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
      await Promise.race([childExit, delay(5_000)]);
      // A handle already given out (prepared restore) learns of the exit through childExit.
      // QEMU's own last words go on the same line: callers log errors one line long.
      const lastWords = (await fileTail(join(stateDir, STATE_FILES.vmmLog), 600)).split('\n').filter(Boolean).slice(-3).join(' | ');
      throw new VmStartError(
        `vm ${spec.id}: ${snapshot ? 'restore' : 'boot'} failed: ${(error as Error).message}${lastWords ? ` (qemu: ${lastWords})` : ''}`,
      );
    };
    try {
      const pid = await new Promise<number>((resolve, reject) => {
        if (child.pid !== undefined) return resolve(child.pid);
        child.once('spawn', () => resolve(child.pid as number));
        child.once('error', reject);
      });
      if (cgroupFailure) throw cgroupFailure;
      if (identity) await this.identities!.bind(identity, spec.id, pid);
      const qmp = await QmpClient.connect(qmpSocketPath, timeoutMs, exitedEarly.signal);
      const controlReadyMs = performance.now() - launchedAt;
      const vm = new QemuVmHandle(resolvedSpec, pid, qmp, stateDir, childExit, identity);
      const record: VmRuntimeRecord = {
        driver: 'qemu-microvm',
        pid,
        processStartTicks: (await processStartTicks(pid)) ?? '',
        identity,
        spec: resolvedSpec,
        startedAt: new Date().toISOString(),
      };
      await writeFileAtomic(join(stateDir, STATE_FILES.runtime), JSON.stringify(record, null, 2));
      const complete = async (prepared: boolean): Promise<VmHandle> => {
        // A prepared restore is timed from start(), not from when its process was spawned.
        const since = prepared ? performance.now() : launchedAt;
        try {
          if (snapshot) {
            if (snapshot.changedMemory) {
              // The pages the VM had changed go back before its device state: the guest must see them when it runs.
              await applyChangedPages(pid, await findGuestRamAreas(pid, spec.memoryFile!.path), snapshot.changedMemory);
            }
            const loaded = await vm.loadIncomingMigration(`fd:${INCOMING_FD}`, performance.now() + timeoutMs);
            // A snapshot taken from a stopped VM comes back stopped; running is what was asked for.
            if (loaded !== 'running' && !options.startPaused) await vm.resume();
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

class QemuVmHandle extends VmmProcessHandle<QmpClient> implements VmHandle {
  constructor(
    spec: VmSpec,
    pid: number,
    private readonly qmp: QmpClient,
    private readonly stateDir: string,
    childExit: Promise<VmExit> | undefined,
    /** The VM's own uid/gid QEMU runs as; the socket its snapshot is written to must be open to it. */
    private readonly identity: VmmIdentity | undefined,
  ) {
    super(spec, pid, childExit);
    qmp.on('close', () => void this.onControlClosed());
  }

  protected controlChannel(): QmpClient {
    return this.qmp;
  }

  protected requestExit(qmp: QmpClient): Promise<void> {
    return qmp.execute('quit').then(() => undefined);
  }

  protected isControlBroken(error: unknown): boolean {
    return error instanceof QmpConnectionError;
  }

  protected override onDetach(): void {
    this.qmp.close();
  }

  protected override onExited(): void {
    this.qmp.close();
    void rm(join(this.stateDir, STATE_FILES.qmpSocket), { force: true });
  }

  /** Loads the snapshot stream QEMU was started to wait for (-incoming defer) and lets it run. */
  async loadIncomingMigration(uri: string, deadline: number): Promise<QemuRunState> {
    if (this.spec.memoryFile) {
      await this.qmp.execute('migrate-set-capabilities', {
        capabilities: [{ capability: 'x-ignore-shared', state: true }],
      });
    }
    await this.qmp.execute('migrate-incoming', { uri });
    // The run state leaves 'inmigrate' once the stream is loaded: 'running' when QEMU
    // autostarts, 'paused' with -S. Polling QMP costs well under a millisecond per round.
    for (;;) {
      const { status } = await this.qmp.execute('query-status');
      if (status !== 'inmigrate') {
        if (status === 'running' || status === 'paused' || status === 'prelaunch') return status;
        throw new VmSnapshotError(`incoming migration ended in state ${status}`);
      }
      if (performance.now() > deadline) throw new VmSnapshotError('timed out loading the snapshot');
      await delay(1);
    }
  }

  async state(): Promise<VmRunState> {
    if (this.exitInfo) return 'exited';
    const { status } = await this.controlled((qmp) => qmp.execute('query-status'));
    if (status === 'running') return 'running';
    if (status === 'paused' || status === 'postmigrate' || status === 'prelaunch') return 'paused';
    if (status === 'inmigrate') return 'restoring';
    return 'other';
  }

  async pause(): Promise<void> {
    await this.controlled((qmp) => qmp.execute('stop'));
  }

  async resume(): Promise<void> {
    await this.controlled((qmp) => qmp.execute('cont'));
  }


  async snapshot(statePath: string): Promise<VmSnapshotResult> {
    const qmp = this.control();
    const started = performance.now();
    if (this.spec.memoryFile?.share) {
      await qmp.execute('migrate-set-capabilities', {
        capabilities: [{ capability: 'x-ignore-shared', state: true }],
      });
    }
    const { status } = await qmp.execute('query-status');
    if (status === 'running') await qmp.execute('stop');
    const partial = `${statePath}.partial`;
    await rm(partial, { force: true });
    // QEMU is chrooted and may not spawn a writer: it connects to a socket the agent listens on in its chroot, and the
    // agent writes the stream to the file.
    const receiver = await SnapshotReceiver.listen(snapshotSocketPath(this.stateDir), partial, this.identity);
    try {
      await qmp.execute('migrate', { uri: `unix:/${SNAPSHOT_SOCKET_NAME}` });
      const deadline = performance.now() + 120_000;
      for (;;) {
        const info = await qmp.execute('query-migrate');
        if (info.status === 'completed') break;
        if (info.status === 'failed' || info.status === 'cancelled') {
          // QEMU often gives no error-desc: its log says what went wrong.
          const vmmLog = (await fileTail(join(this.stateDir, STATE_FILES.vmmLog), 600)).split('\n').filter(Boolean).slice(-3).join(' | ');
          throw new VmSnapshotError(`vm ${this.id}: migration ${info.status}: ${info['error-desc'] ?? 'no detail'}${vmmLog ? `; qemu log: ${vmmLog}` : ''}`);
        }
        if (performance.now() > deadline) throw new VmSnapshotError(`vm ${this.id}: snapshot timed out`);
        await delay(2);
      }
      // QEMU closes the stream once the migration completed: the file is whole when the receiver has written it all.
      await receiver.written(10_000);
    } catch (error) {
      await rm(partial, { force: true });
      throw error;
    } finally {
      await receiver.close();
    }
    await rename(partial, statePath);
    const { size } = await stat(statePath);
    return { statePath, stateBytes: size, durationMs: performance.now() - started };
  }

  async checkpoint(dir: string): Promise<VmCheckpoint> {
    const qmp = this.control();
    const memoryFile = this.spec.memoryFile;
    if (!memoryFile || memoryFile.share) {
      throw new VmSnapshotError(`vm ${this.id}: only a clone (guest RAM on a private mapping of its memory file) can be checkpointed`);
    }
    const started = performance.now();
    const { status } = await qmp.execute('query-status');
    if (status === 'running') await qmp.execute('stop');
    const stopped = performance.now();

    // QEMU saves device state by path, chrooted: into a file the agent makes for it (the chroot stays root's).
    const jail = confinementDir(this.stateDir);
    const jailed = join(jail, DEVICE_STATE_FILE);
    await rm(jailed, { force: true });
    await writeFile(jailed, '', { mode: 0o600, flag: 'wx' });
    if (this.identity) await chown(jailed, this.identity.uid, this.identity.gid);
    try {
      await qmp.execute('xen-save-devices-state', { filename: `/${DEVICE_STATE_FILE}`, live: false });
    } catch (error) {
      await rm(jailed, { force: true });
      throw new VmSnapshotError(`vm ${this.id}: saving device state failed: ${(error as Error).message}`);
    }
    const statePath = join(dir, DEVICE_STATE_FILE);
    await rename(jailed, statePath);
    await chown(statePath, 0, 0);
    const stateSaved = performance.now();

    const changedMemory = { pagesPath: join(dir, 'memory.pages'), indexPath: join(dir, 'memory.index') };
    const captured = await captureChangedPages(this.pid, await findGuestRamAreas(this.pid, memoryFile.path), changedMemory);
    const [stateBytes, stateSha256] = await Promise.all([stat(statePath).then((s) => s.size), sha256File(statePath)]);
    const memorySaved = performance.now();
    await Promise.all([statePath, changedMemory.pagesPath, changedMemory.indexPath].map(syncFileData));
    const done = performance.now();
    return {
      statePath,
      stateBytes,
      changedMemory: { ...changedMemory, pages: captured.pages, bytes: captured.bytes, runs: captured.runs, indexBytes: captured.indexBytes },
      sha256: { state: stateSha256, pages: captured.pagesSha256, index: captured.indexSha256 },
      durationMs: done - started,
      timings: { stopMs: stopped - started, deviceStateMs: stateSaved - stopped, memoryMs: memorySaved - stateSaved, syncMs: done - memorySaved },
    };
  }

  private async onControlClosed(): Promise<void> {
    if (this.detached || this.exitInfo) return;
    // QEMU closes the socket only when it exits, but the process may still be tearing down
    // (unmapping guest RAM) for a few milliseconds. Watch it until it is gone: the child's
    // exit event cannot be relied on, since the child is unref'd and adopted VMs have none.
    while (!this.exitInfo && !this.detached) {
      if ((await processStartTicks(this.pid)) === undefined) {
        this.markExited({ code: null, signal: null, reason: 'control-socket-closed', at: new Date() });
        return;
      }
      await delay(5);
    }
  }

}

async function assertReadable(spec: VmSpec, snapshot: VmSnapshotRef | undefined): Promise<void> {
  const files: Array<[string, string]> = [
    ['kernel', spec.kernelPath],
    ['initrd', spec.initrdPath],
    ['root disk', spec.rootDisk.path],
  ];
  if (spec.memoryFile && (snapshot || !spec.memoryFile.share)) files.push(['memory file', spec.memoryFile.path]);
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

async function readRuntimeRecord(stateDir: string): Promise<VmRuntimeRecord> {
  return JSON.parse(await readFile(join(stateDir, STATE_FILES.runtime), 'utf8')) as VmRuntimeRecord;
}

// Adopting a VM and leasing its uid both tell a live VMM from a reused pid the same way; tests import it from here.
export { processStartTicks };





