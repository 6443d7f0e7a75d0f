import { randomBytes } from 'node:crypto';
import { chmod, link, mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Inject, Injectable, Logger } from '@nestjs/common';
import { sha256File, syncFileData } from '../file-integrity';
import { runHostCommand } from '../host-command/host-command';
import { GUEST_AGENT_PORT, type NetworkSlot } from '../network';
import { TemplateStore, coldBootSpec, type TemplateBuild } from '../template';
import { VMM_DRIVER, type PreparedRestore, type VmAccelerator, type VmDiskSpec, type VmHandle, type VmmDriver, type VmNetworkSpec, type VmSpec, type VmStartOptions } from '../vmm';
import { waitForGuestAgent, warmGuestAgent } from '../guest-agent-client';
import { SnapshotIntegrityError, SnapshotMissingError, SnapshotOutdatedError, TemplateBootError } from './snapshot.errors';
import { startTemplateCommands } from './template-start';

/** Network slots for the template boot; NetworkSlotPool satisfies it. */
export interface SnapshotNetwork {
  acquire(): Promise<NetworkSlot>;
  release(slot: Pick<NetworkSlot, 'index'>): Promise<void>;
}
export const SNAPSHOT_NETWORK = Symbol('SNAPSHOT_NETWORK');

export const SNAPSHOT_OPTIONS = Symbol('SNAPSHOT_OPTIONS');
export interface SnapshotOptions {
  /** Template cold boot until the agent answers (TCG boots take ~8 s on 2 cores). */
  bootTimeoutMs: number;
  /** Scratch space for the template VM's state dir and serial log. */
  runDir: string;
  /**
   * The resolvers this host's sandboxes get (KILN_GUEST_NAMESERVERS). The template writes them before its memory
   * is saved, so a clone's /init finds /etc/resolv.conf current and skips the write: under TCG a clone's first
   * ext4 write costs ~175 ms of its create.
   */
  guestNameservers: string[];
  /** How long a built template's ready command may keep failing before its snapshot fails (TemplateReadyError); default 120 s. */
  readyTimeoutMs?: number;
}

const SNAPSHOT_FILES = ['memory', 'disk.qcow2', 'state', 'restore-kernel', 'restore-initrd'] as const;
/**
 * 4: the guest agent is warmed up (including /init) before the memory is saved (guest-warm-up.ts).
 * 5: the warm-up also sets, uses and clears an access token, and leaves no connection open.
 * 6: TCG guests get a CPU with ARAT (the command line changed, and the guest kernel picks its tick mode at boot).
 * 7: the warm-up's /init writes the host's guest nameservers (recorded as guestNameservers).
 * 8: VMs save and load migration streams without the configuration section (checkpoints are device state alone).
 */
const SNAPSHOT_FORMAT_VERSION = 8;
type SnapshotFile = (typeof SNAPSHOT_FILES)[number];

export interface SnapshotManifest {
  formatVersion: typeof SNAPSHOT_FORMAT_VERSION;
  templateId: string;
  buildId: string;
  createdAt: string;
  accelerator: VmAccelerator;
  vcpus: number;
  memoryMib: number;
  /** Exact kernel command line the template booted with; clones must be started with it. */
  kernelArgs: string;
  guestMac: string;
  /** The resolvers in the snapshot's /etc/resolv.conf: clones given the same ones do not rewrite it. */
  guestNameservers: string[];
  files: Record<SnapshotFile, { bytes: number; sha256: string }>;
  timings: { bootToAgentMs: number; saveMs: number };
}

/** A template snapshot on disk, ready to restore clones from. */
export interface TemplateSnapshot {
  build: TemplateBuild;
  dir: string;
  manifest: SnapshotManifest;
  /** Guest RAM at the snapshot point; clones map it private (copy-on-write). */
  memoryPath: string;
  /** Device state (x-ignore-shared migration stream). */
  statePath: string;
  /**
   * Frozen disk state the memory snapshot saw (qcow2 over the template rootfs). Read-only:
   * each clone needs its own writable layer on top of it (RootfsLayers, qcow2 driver).
   */
  disk: VmDiskSpec;
}

export interface CloneOptions {
  id: string;
  stateDir: string;
  serialLogPath: string;
  /** The clone's writable layer over `snapshot.disk`. */
  rootDisk: VmDiskSpec;
  network: VmNetworkSpec;
}

/**
 * Builds and serves template snapshots: boot the template once with its RAM in a shared
 * file, wait for the guest agent, save device state with x-ignore-shared, and freeze the
 * disk overlay the guest wrote during boot. Clones restore the same command line with the
 * RAM file mapped private, so they share the template's pages and never modify the file.
 */
@Injectable()
export class TemplateSnapshots {
  private readonly logger = new Logger(TemplateSnapshots.name);
  private readonly inflight = new Map<string, Promise<TemplateSnapshot>>();
  /** Snapshot dirs (with size and mtime of each file) whose hashes were checked by this process. */
  private readonly verified = new Map<string, string>();

  constructor(
    @Inject(TemplateStore) private readonly templates: TemplateStore,
    @Inject(VMM_DRIVER) private readonly driver: VmmDriver,
    @Inject(SNAPSHOT_NETWORK) private readonly network: SnapshotNetwork,
    @Inject(SNAPSHOT_OPTIONS) private readonly options: SnapshotOptions,
  ) {}

  /** The snapshot of a template build, created on first use; verified once per process. */
  async ensure(templateId: string, buildId?: string): Promise<TemplateSnapshot> {
    const build = await this.templates.resolve(templateId, buildId);
    const key = build.dir;
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.loadOrCreate(build).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    return pending;
  }

  /** The existing snapshot of a build, verified; SnapshotMissingError when there is none. */
  async load(build: TemplateBuild): Promise<TemplateSnapshot> {
    let manifest: SnapshotManifest;
    try {
      manifest = JSON.parse(await readFile(join(build.snapshotDir, 'manifest.json'), 'utf8')) as SnapshotManifest;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new SnapshotMissingError(`template ${build.templateId}/${build.buildId} has no snapshot`);
      }
      throw new SnapshotIntegrityError(`snapshot manifest of ${build.templateId}/${build.buildId} is unreadable`);
    }
    if (manifest.formatVersion !== SNAPSHOT_FORMAT_VERSION) {
      throw new SnapshotOutdatedError(
        `snapshot of ${build.templateId}/${build.buildId} has format ${manifest.formatVersion}, not ${SNAPSHOT_FORMAT_VERSION}`,
      );
    }
    const snapshot = describeSnapshot(build, manifest);
    await this.verify(snapshot);
    return snapshot;
  }

  /**
   * Checks sizes and sha256 of the snapshot files against the manifest and the sidecars.
   * Hashing 512 MiB takes seconds, so a directory is hashed once per process and after
   * that only re-checked for changed sizes or mtimes.
   */
  async verify(snapshot: TemplateSnapshot): Promise<void> {
    const fingerprint = await fileFingerprint(snapshot.dir);
    if (this.verified.get(snapshot.dir) === fingerprint) return;
    for (const name of SNAPSHOT_FILES) {
      const path = join(snapshot.dir, name);
      const expected = snapshot.manifest.files[name];
      const sidecar = (await readFile(`${path}.sha256`, 'utf8').catch(() => '')).split(/\s+/)[0];
      if (!expected || sidecar !== expected.sha256) {
        throw new SnapshotIntegrityError(`${path}: sidecar and manifest disagree`);
      }
      const { size } = await stat(path).catch(() => ({ size: -1 }));
      if (size !== expected.bytes) throw new SnapshotIntegrityError(`${path}: ${size} bytes, manifest says ${expected.bytes}`);
      const actual = await sha256File(path);
      if (actual !== expected.sha256) throw new SnapshotIntegrityError(`${path}: sha256 ${actual} != ${expected.sha256}`);
    }
    this.verified.set(snapshot.dir, fingerprint);
  }

  /** The VM spec of a clone: the template's command line with the RAM file mapped private. */
  cloneSpec(snapshot: TemplateSnapshot, clone: CloneOptions): VmSpec {
    return {
      id: clone.id,
      vcpus: snapshot.manifest.vcpus,
      memoryMib: snapshot.manifest.memoryMib,
      kernelPath: join(snapshot.dir, 'restore-kernel'),
      initrdPath: join(snapshot.dir, 'restore-initrd'),
      kernelArgs: snapshot.manifest.kernelArgs,
      rootDisk: clone.rootDisk,
      network: { ...clone.network, guestMac: snapshot.manifest.guestMac },
      memoryFile: { path: snapshot.memoryPath, share: false },
      stateDir: clone.stateDir,
      serialLogPath: clone.serialLogPath,
      accelerator: snapshot.manifest.accelerator,
    };
  }

  /** Starts a clone from a verified snapshot; resolves once its vCPUs run (or, with startPaused, are ready to). */
  async restore(snapshot: TemplateSnapshot, clone: CloneOptions, options: VmStartOptions = {}): Promise<VmHandle> {
    // No second verify: a TemplateSnapshot only comes from ensure()/load(), which just verified it, and this is
    // the sandbox-create hot path (it re-read the directory's sizes and mtimes on every create).
    return this.driver.restore(this.cloneSpec(snapshot, clone), { statePath: snapshot.statePath }, options);
  }

  /** A clone whose VMM is already running and waiting: start() makes it live in milliseconds. */
  async prepareClone(snapshot: TemplateSnapshot, clone: CloneOptions): Promise<PreparedRestore> {
    await this.verify(snapshot);
    return this.driver.prepareRestore(this.cloneSpec(snapshot, clone), { statePath: snapshot.statePath });
  }

  /**
   * Gives `target` the snapshot of `source` (hard links, a manifest of its own): for a template build whose rootfs,
   * kernel, shape and start command are those of `source` (a rebuild of an unchanged definition), booting it again
   * would save the same state. The snapshot's disk names its backing rootfs relatively, so it serves the target's.
   */
  async adopt(target: TemplateBuild, source: TemplateSnapshot): Promise<TemplateSnapshot> {
    await this.verify(source);
    const staging = `${target.snapshotDir}.partial-${randomBytes(4).toString('hex')}`;
    await mkdir(staging, { recursive: true });
    await chmod(staging, 0o755);
    try {
      for (const name of SNAPSHOT_FILES) {
        await link(join(source.dir, name), join(staging, name));
        await link(join(source.dir, `${name}.sha256`), join(staging, `${name}.sha256`));
      }
      const manifest: SnapshotManifest = { ...source.manifest, templateId: target.templateId, buildId: target.buildId, createdAt: new Date().toISOString() };
      await writeFile(join(staging, 'manifest.json'), JSON.stringify(manifest, null, 2));
      await rename(staging, target.snapshotDir);
      const snapshot = describeSnapshot(target, manifest);
      // The same files (inodes) the source's verification hashed.
      this.verified.set(snapshot.dir, await fileFingerprint(snapshot.dir));
      return snapshot;
    } catch (error) {
      await rm(staging, { recursive: true, force: true });
      throw error;
    }
  }

  private async loadOrCreate(build: TemplateBuild): Promise<TemplateSnapshot> {
    try {
      return await this.load(build);
    } catch (error) {
      if (error instanceof SnapshotOutdatedError) {
        // Running clones keep their open files; only new restores need the new layout.
        const retired = `${build.snapshotDir}.retired-${randomBytes(4).toString('hex')}`;
        await rename(build.snapshotDir, retired);
        await rm(retired, { recursive: true, force: true });
        this.logger.log(`${error.message}: recreating it`);
      } else if (!(error instanceof SnapshotMissingError)) {
        throw error;
      }
    }
    return this.create(build);
  }

  private async create(build: TemplateBuild): Promise<TemplateSnapshot> {
    const runId = `tmpl-${build.templateId.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 24)}-${randomBytes(4).toString('hex')}`;
    const staging = `${build.snapshotDir}.partial-${randomBytes(4).toString('hex')}`;
    const runDir = join(this.options.runDir, runId);
    await mkdir(staging, { recursive: true });
    // The agent writes the device state (QEMU streams it to a socket in its chroot, see VmHandle.snapshot); the
    // finished snapshot is read by every clone's VMM before it drops privileges. An explicit mode, whatever the
    // agent's umask (mkdir's mode is masked by it, chmod is not).
    await chmod(staging, 0o755);
    await mkdir(runDir, { recursive: true });
    const memoryPath = join(staging, 'memory');
    const diskPath = join(staging, 'disk.qcow2');
    const statePath = join(staging, 'state');
    let slot: NetworkSlot | undefined;
    let vm: VmHandle | undefined;
    try {
      // Relative backing path: the snapshot keeps working if the template dir moves.
      await runHostCommand('qemu-img', [
        'create', '-q', '-f', 'qcow2', '-F', build.rootfs.format, '-b', `../${basenameOf(build.rootfs.path)}`, diskPath,
      ]);
      // The template VM opens its disk as root and keeps that fd when saving the snapshot (auto-read-only=off); the
      // frozen disk is the backing file of every clone's layer. Explicit mode whatever the agent's umask.
      await chmod(diskPath, 0o644);
      slot = await this.network.acquire();
      const spec = coldBootSpec(build, {
        id: runId,
        rootDisk: { path: diskPath, format: 'qcow2' },
        slot,
        memoryFile: { path: memoryPath, share: true },
        stateDir: join(runDir, 'vm'),
        serialLogPath: join(runDir, 'serial.log'),
      });
      const kernelArgs = spec.kernelArgs;
      const bootStarted = performance.now();
      vm = await this.driver.spawn(spec);
      const vmExited = new AbortController();
      void vm.exited.then((exit) => vmExited.abort(`template VM exited (${exit.reason})`));
      try {
        await waitForGuestAgent(slot.hostAddress, build.agentPort ?? GUEST_AGENT_PORT, {
          timeoutMs: this.options.bootTimeoutMs,
          abort: vmExited.signal,
        });
      } catch (error) {
        const serial = await readFile(spec.serialLogPath, 'utf8').catch(() => '');
        throw new TemplateBootError(
          `template ${build.templateId}/${build.buildId}: ${(error as Error).message}\n${serial.slice(-2000)}`,
        );
      }
      const bootToAgentMs = performance.now() - bootStarted;
      try {
        await warmGuestAgent(slot.hostAddress, build.agentPort ?? GUEST_AGENT_PORT, { nameservers: this.options.guestNameservers });
      } catch (error) {
        throw new TemplateBootError(`template ${build.templateId}/${build.buildId}: guest agent warm-up failed: ${(error as Error).message}`);
      }
      // A built template's start command runs in every sandbox from the moment it exists: launched here, after the
      // warm-up (its /init set the clock and resolvers), and waited for through the ready command.
      if (build.startCmd || build.readyCmd) {
        const { readyAfterMs } = await startTemplateCommands(slot.hostAddress, build.agentPort ?? GUEST_AGENT_PORT, build, {
          readyTimeoutMs: this.options.readyTimeoutMs ?? 120_000,
        });
        this.logger.log(`template ${build.templateId}/${build.buildId}: start command ready after ${readyAfterMs} ms`);
      }
      await writeRestoreBootFiles(build.kernelPath, staging);
      const accelerator: VmAccelerator = vm.spec.accelerator ?? 'tcg';
      const saved = await vm.snapshot(statePath);
      await vm.stop();
      vm = undefined;

      const files = {} as SnapshotManifest['files'];
      for (const name of SNAPSHOT_FILES) {
        const path = join(staging, name);
        await syncFileData(path);
        const sha256 = await sha256File(path);
        const { size } = await stat(path);
        files[name] = { bytes: size, sha256 };
        await writeFile(`${path}.sha256`, `${sha256}  ${name}\n`);
      }
      const manifest: SnapshotManifest = {
        formatVersion: SNAPSHOT_FORMAT_VERSION,
        templateId: build.templateId,
        buildId: build.buildId,
        createdAt: new Date().toISOString(),
        accelerator,
        vcpus: build.vcpus,
        memoryMib: build.memoryMib,
        kernelArgs,
        guestMac: slot.guestMac,
        guestNameservers: this.options.guestNameservers,
        files,
        timings: { bootToAgentMs: Math.round(bootToAgentMs), saveMs: Math.round(saved.durationMs) },
      };
      await writeFile(join(staging, 'manifest.json'), JSON.stringify(manifest, null, 2));
      try {
        await rename(staging, build.snapshotDir);
      } catch (error) {
        // Another agent process finished first; its snapshot is as good as ours.
        if ((error as NodeJS.ErrnoException).code !== 'ENOTEMPTY' && (error as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw error;
        }
        await rm(staging, { recursive: true, force: true });
        return this.load(build);
      }
      const snapshot = describeSnapshot(build, manifest);
      this.verified.set(snapshot.dir, await fileFingerprint(snapshot.dir));
      this.logger.log(
        `snapshot of ${build.templateId}/${build.buildId}: agent up after ${manifest.timings.bootToAgentMs} ms, ` +
          `saved in ${manifest.timings.saveMs} ms (${files.state.bytes} B of device state)`,
      );
      return snapshot;
    } catch (error) {
      await rm(staging, { recursive: true, force: true });
      throw error;
    } finally {
      if (vm) await vm.kill().catch(() => undefined);
      if (slot) await this.network.release(slot).catch(() => undefined);
      await rm(runDir, { recursive: true, force: true });
    }
  }
}

function describeSnapshot(build: TemplateBuild, manifest: SnapshotManifest): TemplateSnapshot {
  const dir = build.snapshotDir;
  return {
    build,
    dir,
    manifest,
    memoryPath: join(dir, 'memory'),
    statePath: join(dir, 'state'),
    disk: { path: join(dir, 'disk.qcow2'), format: 'qcow2', readOnly: true },
  };
}

/**
 * Clones never run the kernel (guest RAM already holds the booted one), yet QEMU loads
 * whatever -kernel/-initrd name into its own memory for fw_cfg: 14 MiB of private memory per
 * clone for the Debian kernel. A restore only needs a file QEMU accepts as a bzImage, so the
 * snapshot keeps the kernel's setup header plus one page, and a one-page initrd.
 */
async function writeRestoreBootFiles(kernelPath: string, dir: string): Promise<void> {
  const kernel = await open(kernelPath, 'r');
  let stub: Buffer;
  try {
    const header = Buffer.alloc(0x210);
    await kernel.read(header, 0, header.length, 0);
    if (header.toString('latin1', 0x202, 0x206) !== 'HdrS') {
      throw new SnapshotIntegrityError(`${kernelPath} is not a bzImage (no HdrS signature)`);
    }
    // setup_sects at 0x1f1; 0 means the historical default of 4.
    const setupBytes = ((header[0x1f1] || 4) + 1) * 512;
    stub = Buffer.alloc(setupBytes + 4096);
    await kernel.read(stub, 0, stub.length, 0);
  } finally {
    await kernel.close();
  }
  await writeFile(join(dir, 'restore-kernel'), stub);
  await writeFile(join(dir, 'restore-initrd'), Buffer.alloc(4096));
}

async function fileFingerprint(dir: string): Promise<string> {
  const parts: string[] = [];
  for (const name of SNAPSHOT_FILES) {
    const s = await stat(join(dir, name)).catch(() => undefined);
    parts.push(`${name}:${s?.size ?? -1}:${s?.mtimeMs ?? -1}`);
  }
  return parts.join('|');
}


function basenameOf(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}
