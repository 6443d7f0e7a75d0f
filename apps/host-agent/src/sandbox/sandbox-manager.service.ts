import { randomBytes } from 'node:crypto';
import { Agent } from 'node:http';
import { hostname } from 'node:os';
import { chmod, copyFile, mkdir, readFile, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { Inject, Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { ErrorCode, KilnError, type EgressPolicy } from '@kiln/contracts';
import { GUEST_ENTROPY_SEED_BYTES } from '@kiln/contracts/guest-init';
import { HostAgentEnv, describeError, ipListEntries } from '@kiln/config';
import { SandboxEventStream, SandboxLifecycleKind } from '@kiln/messaging';
import { MetricsRegistry } from '@kiln/telemetry';
import {
  CHECKPOINT_FILES,
  CheckpointCorruptError,
  CheckpointNotFoundError,
  CheckpointStore,
  checkpointVmShape,
  type CheckpointKind,
  type CheckpointManifest,
} from '../checkpoint';
import { ClonePool, type RestoredClone } from '../clone-pool';
import {
  GUEST_AGENT_PORT,
  EgressProxyNotConfiguredError,
  InvalidEgressPolicyError,
  NetworkSlot,
  NetworkSlotPool,
  SlotsExhaustedError,
  type AppliedEgressPolicy,
} from '../network';
import { RootfsLayer, RootfsLayers } from '../rootfs';
import { SnapshotError, TemplateNotReadyError, TemplateSnapshot, TemplateSnapshotReadiness, TemplateSnapshots, type TemplateSnapshotStatus } from '../snapshot';
import { coldBootSpec, InvalidTemplateIdError, TemplateNotFoundError, TemplateStore } from '../template';
import { VMM_DRIVER, VmExit, VmHandle, VmmDriver, type VmCheckpoint, type VmDiskSpec, type VmSpec } from '../vmm';
import { initGuestAgent, syncGuestFilesystems, waitForGuestAgent } from '../guest-agent-client';
import { HostCapacity, hostCapacityFrom } from './host-capacity';
import { RecordSealer } from './record-sealer';
import { SandboxRecord, SandboxRecordStore, type PausedState } from './sandbox-record';

export interface CreateSandboxInput {
  sandboxId: string;
  templateId: string;
  /** The exact build to restore; the host never picks one itself. */
  buildId: string;
  teamId: string;
  /** When given (non-zero), must equal the build snapshot's: a restore has exactly the snapshot's shape. */
  vcpus?: number;
  memoryMib?: number;
  envVars: Record<string, string>;
  metadata: Record<string, string>;
  envdAccessToken?: string;
  /** Normalised egress rules (normaliseEgressPolicy), in force before the create returns; none: everything allowed. */
  egress?: EgressPolicy;
  /** Kept in the record and reported back; the control plane enforces it. */
  timeoutSeconds?: number;
  /** Start from this named snapshot (CreateSnapshot) instead of the build's template snapshot. */
  snapshotId?: string;
  /**
   * How long this create may wait for the build's snapshot while it is being made (the gRPC call's remaining
   * deadline); default KILN_CREATE_TEMPLATE_WAIT_SECONDS.
   */
  templateWaitMs?: number;
}

export type LiveSandboxState = 'starting' | 'running' | 'pausing' | 'paused' | 'resuming' | 'stopping';

export interface LiveSandbox {
  record: SandboxRecord;
  state: LiveSandboxState;
  /** Absent while paused (a paused sandbox holds no slot, VMM or RAM) and briefly while starting. */
  slot?: NetworkSlot;
  vm?: VmHandle;
  /** Set when the agent itself is ending the VM, so its exit is not reported as a crash. */
  stopping: boolean;
  /** While starting: aborted by a destroy or by the VM's exit, which ends the create (and its teardown). */
  startAbort?: AbortController;
  /** While starting: settles when the create has finished, either way. */
  started?: Promise<unknown>;
  /** The last egress-policy update, so updates of one sandbox apply in the order they came. */
  networkUpdate?: Promise<unknown>;
  /** The pause, resume, fork or snapshot in progress: one at a time per sandbox. */
  operation?: Promise<unknown>;
  /** A committed pause releasing the VMM, its RAM and slot (after its answer): whatever comes next waits for it. */
  releasing?: Promise<unknown>;
  /**
   * Keep-alive connections to this sandbox's guest. Per sandbox, because slots are reused:
   * a pooled socket to a dead guest at the same address must never serve the next one.
   */
  guestConnections: Agent;
}

export interface ResumeSandboxInput {
  envdAccessToken?: string;
  /** The rules to apply on resume (the control plane's); absent: the ones the sandbox had. */
  egress?: EgressPolicy;
  timeoutSeconds?: number;
}

export interface PauseReport {
  sandbox: LiveSandbox;
  paused: PausedState;
  durationMs: number;
}

export interface ForkReport {
  results: Array<{ sandboxId: string; sandbox?: LiveSandbox; error?: KilnError }>;
  /** How long the source was stopped for the checkpoint. */
  checkpointMs: number;
}

export interface SnapshotReport {
  snapshotId: string;
  manifest: CheckpointManifest;
  manifestSha256: string;
  sizeBytes: number;
  stoppedMs: number;
}

/** Where a restored VM runs: its own id, state dir, serial log, disk layer and slot. */
interface VmPlacement {
  id: string;
  stateDir: string;
  serialLogPath: string;
  rootDisk: VmDiskSpec;
  slot: NetworkSlot;
}

/** A paused sandbox's checkpoint, in its clone directory (removed with it). */
const PAUSED_CHECKPOINT_DIR = 'paused';
/** Forks started at once (the rest wait for a turn). */
const FORK_CONCURRENCY = 4;
/** How long a pause without memory waits for the guest's `sync`. */
const GUEST_SYNC_TIMEOUT_MS = 30_000;
/** A sandbox paused without memory boots its kernel again: as long as a template boot may take under TCG. */
const COLD_BOOT_TIMEOUT_MS = 120_000;

/** The spec of a VM restored from a checkpoint: the checkpointed VM's command line on its own placement. */
function checkpointVmSpec(manifest: CheckpointManifest, placement: VmPlacement): VmSpec {
  const shape = manifest.vm;
  return {
    id: placement.id,
    vcpus: shape.vcpus,
    memoryMib: shape.memoryMib,
    kernelPath: shape.kernelPath,
    initrdPath: shape.initrdPath,
    kernelArgs: shape.kernelArgs,
    rootDisk: placement.rootDisk,
    network: { netnsPath: placement.slot.netnsPath, tapName: placement.slot.tapName, guestMac: shape.guestMac },
    memoryFile: { path: shape.memoryFilePath, share: false },
    stateDir: placement.stateDir,
    serialLogPath: placement.serialLogPath,
    accelerator: shape.accelerator,
  };
}

/** The files a VM checkpoint wrote, with the sha256 each got while being written. */
function checkpointFiles(checkpoint: VmCheckpoint): Record<string, { sha256: string }> {
  return {
    [CHECKPOINT_FILES.deviceState]: { sha256: checkpoint.sha256.state },
    [CHECKPOINT_FILES.memoryPages]: { sha256: checkpoint.sha256.pages },
    [CHECKPOINT_FILES.memoryIndex]: { sha256: checkpoint.sha256.index },
  };
}

/** A VM id of its own for each start of a sandbox's VM (a resume's must not share the uid lease of the one before). */
function vmIdOf(record: SandboxRecord): string {
  const base = (record.cloneDir ? basename(record.cloneDir) : record.sandboxId).slice(0, 48);
  return `${base}-r${randomBytes(3).toString('hex')}`;
}

/**
 * What a memory file holds, cheaply: a template snapshot's memory is named by the sha256 its snapshot manifest records
 * (the snapshot was verified against it), the all-zero file of a VM booted from disk by its size.
 */
async function memoryFileIdentity(path: string): Promise<string> {
  const templateManifest = await readFile(join(dirname(path), 'manifest.json'), 'utf8').then(
    (text) => JSON.parse(text) as { files?: { memory?: { sha256?: string } } },
    () => undefined,
  );
  const sha256 = templateManifest?.files?.memory?.sha256;
  if (sha256) return `sha256:${sha256}`;
  const size = await stat(path).then((s) => s.size, () => -1);
  return size < 0 ? 'missing' : `zero:${size}`;
}

async function pathExists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** The parts of a restored, paused VM a create turns into a sandbox (a pooled clone, or a restore from a checkpoint). */
type StartingClone = Pick<RestoredClone, 'cloneId' | 'dir' | 'vmStateDir' | 'serialLogPath' | 'vm' | 'slot' | 'layer'>;

/** Where a create's VM comes from. */
interface CloneSource {
  templateId: string;
  buildId: string;
  take(): Promise<{ clone: StartingClone; source: string }>;
  /** A checkpoint the clone's disk backs onto (kept as long as the sandbox is). */
  diskCheckpointDir?: string;
  /** The token the restored guest already holds (a checkpoint of a sandbox that had one). */
  currentAccessToken?: string;
}

/** A destroy's reason for aborting a start: not the host failing the create, unlike a VM's death while starting. */
class DestroyedWhileStartingError extends KilnError {
  constructor() {
    super(ErrorCode.Conflict, 'destroyed while starting');
  }
}

function vmExitedWhileStarting(exit: VmExit): KilnError {
  return new KilnError(ErrorCode.Unavailable, `VM exited while starting (${exit.reason}${exit.signal ? `, ${exit.signal}` : ''})`);
}

/** The last lines the guest printed, for failure reports (the log goes with the sandbox's directory). */
async function consoleTail(path: string | undefined, bytes = 600): Promise<string> {
  if (!path) return '(none)';
  const text = await readFile(path, 'utf8').catch(() => '');
  return JSON.stringify(text.slice(-bytes).trim()) || '(empty)';
}

function guestConnectionPool(): Agent {
  return new Agent({ keepAlive: true, maxSockets: 128 });
}

const SANDBOX_ID = /^[a-z0-9][a-z0-9-]{0,63}$/;

/**
 * Owns every sandbox on this host: the VMM process, its network slot and its disk
 * layer, all tied to one on-disk record so a restarted agent can adopt or clean up.
 */
@Injectable()
export class SandboxManager implements OnModuleInit, OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(SandboxManager.name);
  private readonly sandboxes = new Map<string, LiveSandbox>();
  private readonly records: SandboxRecordStore;
  /** Seals envd tokens at rest: in sandbox records and in named snapshots' manifests. */
  private readonly sealer: RecordSealer;
  private readonly checkpoints: CheckpointStore;
  private readonly pauseSeconds;
  private readonly resumeSeconds;
  readonly capacity: HostCapacity;
  private readonly nameservers: string[];
  private readonly createSeconds;
  private readonly liveGauge;
  /** Each template build's snapshot: made, retried with backoff when it fails, and reported on /health. */
  private readonly snapshotReadiness: TemplateSnapshotReadiness;
  /** Told as each sandbox's teardown begins (see onSandboxEnding). */
  private readonly endingListeners = new Set<(sandboxId: string) => void>();

  constructor(
    private readonly env: HostAgentEnv,
    private readonly slots: NetworkSlotPool,
    private readonly layers: RootfsLayers,
    @Inject(VMM_DRIVER) private readonly vmm: VmmDriver,
    snapshots: TemplateSnapshots,
    private readonly clones: ClonePool,
    private readonly templates: TemplateStore,
    private readonly events: SandboxEventStream,
    metrics: MetricsRegistry,
  ) {
    this.sealer = new RecordSealer(env.KILN_HOST_STATE_KEY);
    this.records = new SandboxRecordStore(join(env.KILN_DATA_DIR, 'sandboxes'), this.sealer);
    this.checkpoints = new CheckpointStore(join(env.KILN_DATA_DIR, 'checkpoints'));
    this.pauseSeconds = metrics.histogram('kiln_agent_sandbox_pause_seconds', 'PauseSandbox on the host, by whether memory was kept', ['memory'], [0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2, 5]);
    this.resumeSeconds = metrics.histogram('kiln_agent_sandbox_resume_seconds', 'ResumeSandbox on the host, by whether memory was kept', ['memory'], [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30]);
    this.capacity = hostCapacityFrom(env);
    this.nameservers = ipListEntries(env.KILN_GUEST_NAMESERVERS);
    this.createSeconds = metrics.histogram(
      'kiln_agent_sandbox_create_seconds',
      'CreateSandbox on the host, by phase and by where the clone came from (pool or restored on demand)',
      ['phase', 'clone'],
      [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5],
    );
    this.liveGauge = metrics.gauge('kiln_agent_sandboxes', 'Sandboxes on this host');
    metrics.gauge('kiln_agent_network_slots', 'Network slots by state (leased: to a sandbox or a pooled clone)', ['state'], (gauge) => {
      const stats = slots.stats();
      gauge.set({ state: 'leased' }, stats.leased);
      gauge.set({ state: 'free' }, stats.free);
      gauge.set({ state: 'preparing' }, stats.preparing);
    });
    this.snapshotReadiness = new TemplateSnapshotReadiness(
      snapshots,
      { initialDelayMs: env.KILN_SNAPSHOT_RETRY_INITIAL_SECONDS * 1000, maxDelayMs: env.KILN_SNAPSHOT_RETRY_MAX_SECONDS * 1000 },
      (snapshot) => clones.keepWarm(snapshot),
    );
  }

  /** Adopts VMs that outlived a previous agent process and removes whatever is left of dead ones. */
  async onModuleInit(): Promise<void> {
    const found = await this.records.scan();
    const adopted: Array<{ record: SandboxRecord; vm: VmHandle }> = [];
    const paused: SandboxRecord[] = [];
    for (const { sandboxId, record, tokenUnreadable } of found) {
      if (!record) {
        await this.records.remove(sandboxId);
        continue;
      }
      if (tokenUnreadable) this.logger.warn(`sandbox ${sandboxId}: its envd token is unreadable (${tokenUnreadable}); only /health reaches it`);
      if (record.paused) {
        // Paused is committed: a VMM still there is the paused one not yet killed, or a resume that never committed.
        if (await this.vmm.terminate(record.vmStateDir)) this.logger.log(`sandbox ${sandboxId} is paused; ended the VMM an interrupted pause or resume left`);
        paused.push(record);
        continue;
      }
      try {
        adopted.push({ record, vm: await this.vmm.adopt(record.vmStateDir) });
      } catch (error) {
        this.logger.warn(`sandbox ${sandboxId} did not survive the restart (${describeError(error)}); cleaning up`);
        await this.removeDisk(record);
        await this.records.remove(sandboxId);
        this.publish('crashed', record, 'VM was gone when the host agent restarted');
      }
    }
    // Clones still in the pool when the agent stopped (or half-made) go before their slots are reclaimed.
    await this.clones.reconcile(new Set([...adopted.map((a) => a.record), ...paused].flatMap((record) => (record.cloneDir ? [record.cloneDir] : []))));
    // Each slot is adopted with its sandbox's policy, re-applied in the same transaction as the slot's rules.
    const report = await this.slots.init(adopted.map((a) => ({ index: a.record.slotIndex, egress: a.record.egress })));
    const lostSlots = new Set(report.lost.map((l) => l.index));
    for (const { record, vm } of adopted) {
      if (lostSlots.has(record.slotIndex)) {
        // The VM survived but its network did not: it is unreachable, so it is ended rather than adopted.
        this.logger.warn(`sandbox ${record.sandboxId} lost its network slot ${record.slotIndex}; removing it`);
        await vm.kill().catch(() => undefined);
        await this.removeDisk(record);
        await this.records.remove(record.sandboxId);
        this.publish('crashed', record, 'network slot lost across a host agent restart');
        continue;
      }
      const slot = await this.slots.adopt(record.slotIndex, record.egress);
      const live: LiveSandbox = { record, state: 'running', slot, vm, stopping: false, guestConnections: guestConnectionPool() };
      this.sandboxes.set(record.sandboxId, live);
      this.watchExit(live, vm);
      // A pause, fork or snapshot the agent died in stopped the guest and never committed: it runs on as it was.
      if ((await vm.state().catch(() => 'other')) === 'paused') {
        await vm.resume().catch((error) => this.logger.warn(`resuming ${record.sandboxId} after an interrupted checkpoint failed: ${describeError(error)}`));
        this.logger.log(`sandbox ${record.sandboxId} was stopped by an interrupted pause or checkpoint; resumed it`);
      }
      if (record.cloneDir) await rm(join(record.cloneDir, PAUSED_CHECKPOINT_DIR), { recursive: true, force: true });
      this.logger.log(`adopted sandbox ${record.sandboxId} (pid ${vm.pid}, slot ${record.slotIndex})`);
    }
    for (const record of paused) {
      this.sandboxes.set(record.sandboxId, { record, state: 'paused', stopping: false, guestConnections: guestConnectionPool() });
      this.logger.log(`sandbox ${record.sandboxId} is paused (since ${record.paused?.pausedAt})`);
    }
    this.liveGauge.set(this.sandboxes.size);
    await this.collectCheckpoints();
  }

  /**
   * Makes (or verifies) every local template's snapshot in the background and starts its clone pool, so the
   * first create does not pay for a cold boot, a full hash of the memory file or a restore. The first attempts run
   * one template at a time (each is a VM boot competing for the same cores); a failed one is retried with backoff.
   */
  onApplicationBootstrap(): void {
    void (async () => {
      for (const template of await this.templates.list()) {
        if (template.currentBuildId) await this.snapshotReadiness.prepare(template.templateId, template.currentBuildId);
      }
    })().catch((error) => this.logger.error(`listing templates for their snapshots failed: ${describeError(error)}`));
  }

  /** Each template build's snapshot state (building, ready, failed with the reason and the next retry). */
  templateSnapshots(): TemplateSnapshotStatus[] {
    return this.snapshotReadiness.describe();
  }

  /**
   * Calls `listener` with a sandbox's id as its teardown begins, whatever ended it (a destroy for a kill, a timeout
   * or a reconcile; the VM's exit or crash; a failed start), before its VM is killed: the traffic proxy ends the
   * sandbox's open connections then, as a dead VM resets none of them. Returns the unsubscribe.
   */
  onSandboxEnding(listener: (sandboxId: string) => void): () => void {
    this.endingListeners.add(listener);
    return () => this.endingListeners.delete(listener);
  }

  list(): LiveSandbox[] {
    return [...this.sandboxes.values()];
  }

  get(sandboxId: string): LiveSandbox | undefined {
    return this.sandboxes.get(sandboxId);
  }

  /** What the host's sandboxes hold: a paused sandbox holds disk only, no vCPU, RAM or slot. */
  usage(): HostCapacity {
    let vcpus = 0;
    let memoryMib = 0;
    let sandboxes = 0;
    for (const { record, state } of this.sandboxes.values()) {
      if (state === 'paused') continue;
      vcpus += record.vcpus;
      memoryMib += record.memoryMib;
      sandboxes++;
    }
    return { vcpus, memoryMib, sandboxes };
  }

  async create(input: CreateSandboxInput): Promise<LiveSandbox> {
    if (!SANDBOX_ID.test(input.sandboxId)) throw new KilnError(ErrorCode.InvalidArgument, 'sandbox_id must be 1-64 lowercase letters, digits or dashes');
    if (!input.templateId) throw new KilnError(ErrorCode.InvalidArgument, 'template_id is required');
    if (!input.buildId) throw new KilnError(ErrorCode.InvalidArgument, 'build_id is required');
    if (this.sandboxes.has(input.sandboxId)) throw new KilnError(ErrorCode.AlreadyExists, `sandbox ${input.sandboxId} already exists on this host`);
    if (input.snapshotId) return this.createFromSnapshot({ ...input, snapshotId: input.snapshotId });
    const egress = this.checkEgress(input.egress);

    const t0 = performance.now();
    let snapshot: TemplateSnapshot;
    try {
      const waitMs = input.templateWaitMs ?? this.env.KILN_CREATE_TEMPLATE_WAIT_SECONDS * 1000;
      snapshot = await this.snapshotReadiness.whenReady(input.templateId, input.buildId, waitMs);
    } catch (error) {
      if (error instanceof TemplateNotFoundError || error instanceof InvalidTemplateIdError) {
        throw new KilnError(ErrorCode.FailedPrecondition, error.message);
      }
      // The control plane may place the sandbox elsewhere or retry here later: the message says why, and when.
      if (error instanceof TemplateNotReadyError) throw new KilnError(ErrorCode.Unavailable, error.message, error.retryAfterSeconds);
      if (error instanceof SnapshotError) throw new KilnError(ErrorCode.Unavailable, `template ${input.templateId} is not ready: ${describeError(error)}`);
      throw error;
    }
    // A sandbox restored from a memory snapshot has exactly the snapshot's shape.
    const { vcpus, memoryMib } = snapshot.manifest;
    if ((input.vcpus && input.vcpus !== vcpus) || (input.memoryMib && input.memoryMib !== memoryMib)) {
      throw new KilnError(
        ErrorCode.FailedPrecondition,
        `template ${input.templateId} build ${input.buildId} restores with ${vcpus} vCPUs and ${memoryMib} MiB; ` +
          `${input.vcpus || vcpus} vCPUs and ${input.memoryMib || memoryMib} MiB were requested`,
      );
    }
    // Checked again: another create of the same id may have passed the first check while the snapshot loaded.
    if (this.sandboxes.has(input.sandboxId)) throw new KilnError(ErrorCode.AlreadyExists, `sandbox ${input.sandboxId} already exists on this host`);
    const live = this.placeStarting(input.sandboxId, vcpus, memoryMib);
    const starting = this.start(
      live,
      {
        templateId: snapshot.build.templateId,
        buildId: snapshot.build.buildId,
        take: async () => {
          const taken = await this.clones.take(snapshot);
          return { clone: taken.clone, source: taken.pooled ? 'pooled' : 'restored' };
        },
      },
      input,
      egress,
      t0,
    );
    live.started = starting.catch(() => undefined);
    // The refill waits for this create: its restore would compete with the guest's /init for CPU.
    void live.started.then(() => this.clones.keepWarm(snapshot));
    return starting;
  }

  /**
   * Turns a paused clone into the sandbox: claim it with the on-disk record, resume it, hand the guest its
   * settings. The create owns every resource until the sandbox runs; on any failure (including a destroy or the
   * VM's exit while starting) it removes them all before it throws.
   */
  private async start(live: LiveSandbox, from: CloneSource, input: CreateSandboxInput, egress: AppliedEgressPolicy, t0: number): Promise<LiveSandbox> {
    const { sandboxId } = input;
    const abort = live.startAbort!.signal;
    let clone: StartingClone | undefined;
    let source = 'restored';
    try {
      const t1 = performance.now();
      const taken = await from.take();
      clone = taken.clone;
      source = taken.source;
      abort.throwIfAborted();
      const t2 = performance.now();
      await this.records.prepare(sandboxId);
      const record: SandboxRecord = {
        sandboxId,
        teamId: input.teamId,
        templateId: from.templateId,
        buildId: from.buildId,
        vcpus: live.record.vcpus,
        memoryMib: live.record.memoryMib,
        metadata: input.metadata,
        envdAccessToken: input.envdAccessToken || undefined,
        slotIndex: clone.slot.index,
        rootfs: { path: clone.layer.path, format: clone.layer.format, driver: clone.layer.driver },
        vmStateDir: clone.vmStateDir,
        serialLogPath: clone.serialLogPath,
        cloneDir: clone.dir,
        createdAt: new Date().toISOString(),
        egress: egress.policy,
        timeoutSeconds: input.timeoutSeconds || undefined,
        ...(from.diskCheckpointDir ? { diskCheckpointDir: from.diskCheckpointDir } : {}),
      };
      // From here the clone belongs to this sandbox: a restarted agent finds it through the record.
      await this.records.save(record);
      live.record = record;
      live.slot = clone.slot;
      live.vm = clone.vm;
      this.watchExit(live, clone.vm);
      const tRecorded = performance.now();
      const phases = await this.bringUp(live, clone.vm, clone.slot, egress, { envVars: input.envVars, currentAccessToken: from.currentAccessToken, signal: abort });
      const t5 = performance.now();
      live.state = 'running';
      live.startAbort = undefined;
      this.liveGauge.set(this.sandboxes.size);
      const observe = (phase: string, ms: number) => this.createSeconds.observe({ phase, clone: source }, ms / 1000);
      observe('clone', t2 - t1);
      observe('record', tRecorded - t2);
      observe('resume', phases.resumeMs);
      observe('egress', phases.egressMs);
      observe('guest-init', t5 - tRecorded - phases.resumeMs);
      observe('total', t5 - t0);
      this.publish('created', record);
      return live;
    } catch (error) {
      live.stopping = true;
      // A VM that died under a command (the driver settles its exit first): report the death, not the command.
      const exit = !abort.aborted && clone?.vm.hasExited ? await clone.vm.exited : undefined;
      const cause: unknown = exit ? vmExitedWhileStarting(exit) : abort.aborted ? abort.reason : error;
      const reason = describeError(cause);
      this.logger.warn(
        `sandbox ${sandboxId} failed to start (${source} clone ${clone?.cloneId ?? '-'}, slot ${clone?.slot.index ?? '-'}, pid ${clone?.vm.pid ?? '-'}): ${reason}; ` +
          `guest console tail: ${await consoleTail(clone?.serialLogPath)}`,
      );
      await this.teardown(sandboxId, clone?.vm, clone?.slot, clone?.layer, clone?.dir);
      // E2B's per-node createFails: a start this host accepted and could not finish. A destroy during the start and
      // a refusal for lack of a slot are not the host failing.
      const destroyed = abort.aborted && abort.reason instanceof DestroyedWhileStartingError;
      if (!destroyed && !(error instanceof SlotsExhaustedError)) this.publish('create_failed', input, reason);
      if ((exit || abort.aborted) && cause instanceof KilnError) throw new KilnError(cause.code, `sandbox ${sandboxId} did not start: ${reason}`);
      if (error instanceof SlotsExhaustedError) throw new KilnError(ErrorCode.ResourceExhausted, 'no free network slot on this host');
      if (error instanceof KilnError) throw error;
      throw new KilnError(ErrorCode.Unavailable, `sandbox ${sandboxId} failed to start: ${describeError(error)}`);
    }
  }

  /**
   * Runs a restored (paused) VM as the sandbox: resumes it, and while the guest agent takes its /init (token, clock,
   * entropy, env vars) applies the slot's egress rules. The slot was leased closed (nothing leaves it but DNS to the
   * platform's resolvers), so the guest may run before its own rules are in: under TCG an /init takes tens of ms,
   * about as long as an nft commit. Resolves once both are done.
   */
  private async bringUp(
    live: LiveSandbox,
    vm: VmHandle,
    slot: NetworkSlot,
    egress: AppliedEgressPolicy,
    options: { envVars?: Record<string, string>; currentAccessToken?: string; signal?: AbortSignal; resumed?: boolean },
  ): Promise<{ resumeMs: number; egressMs: number }> {
    const t0 = performance.now();
    if (!options.resumed) await vm.resume();
    const t1 = performance.now();
    let egressMs = 0;
    const [applied, initialised] = await Promise.allSettled([
      this.slots.setEgressPolicy(slot, egress.policy).then(() => (egressMs = performance.now() - t1)),
      initGuestAgent(
        slot.hostAddress,
        live.guestConnections,
        {
          accessToken: live.record.envdAccessToken,
          ...(options.envVars ? { envVars: options.envVars } : {}),
          timestamp: new Date().toISOString(),
          entropySeed: randomBytes(GUEST_ENTROPY_SEED_BYTES.sent).toString('base64'),
          nameservers: this.nameservers,
        },
        // Part of the create deadline chain (SANDBOX_*_MS in the shared config), shorter than the scheduler's.
        this.env.SANDBOX_GUEST_INIT_DEADLINE_MS,
        { signal: options.signal, currentAccessToken: options.currentAccessToken },
      ),
    ]);
    // Both settle before any failure is handled: teardown must not release the slot under a running nft update.
    if (initialised.status === 'rejected') throw initialised.reason;
    if (applied.status === 'rejected') throw applied.reason;
    return { resumeMs: t1 - t0, egressMs };
  }

  /**
   * Replaces a running sandbox's egress rules (E2B's network update): persisted first, so a restarted agent
   * re-applies what the control plane was last told, then applied. New connections follow at once.
   */
  async updateNetwork(sandboxId: string, policy: EgressPolicy): Promise<LiveSandbox> {
    const live = this.sandboxes.get(sandboxId);
    if (!live) throw KilnError.notFound(`sandbox ${sandboxId}`);
    const egress = this.checkEgress(policy);
    const update = (live.networkUpdate ?? Promise.resolve()).catch(() => undefined).then(async () => {
      if (live.state !== 'running' || this.sandboxes.get(sandboxId) !== live) {
        throw new KilnError(ErrorCode.FailedPrecondition, `sandbox ${sandboxId} is ${live.state}; only a running sandbox's network can change`);
      }
      const record: SandboxRecord = { ...live.record, egress: egress.policy };
      await this.records.save(record);
      live.record = record;
      try {
        await this.slots.setEgressPolicy(live.slot!, egress.policy);
      } catch (error) {
        if (live.state !== 'running') throw KilnError.notFound(`sandbox ${sandboxId}`);
        throw new KilnError(ErrorCode.Unavailable, `egress rules of ${sandboxId} not applied: ${describeError(error)}`);
      }
      return live;
    });
    live.networkUpdate = update;
    return update;
  }

  /** A policy this host can enforce, or the KilnError saying why not (the control plane's fault or this host's). */
  private checkEgress(policy: EgressPolicy | undefined): AppliedEgressPolicy {
    try {
      return this.slots.checkPolicy(policy ?? { allowOut: [], denyOut: [] });
    } catch (error) {
      if (error instanceof InvalidEgressPolicyError) throw new KilnError(ErrorCode.InvalidArgument, error.message);
      if (error instanceof EgressProxyNotConfiguredError) throw new KilnError(ErrorCode.FailedPrecondition, error.message);
      throw error;
    }
  }

  // ---- Pause, resume, fork and named snapshots ------------------------------------------------------------------

  /** Runs `operation` once the sandbox's previous pause/resume/fork/snapshot (and network update) is done. */
  private exclusive<T>(live: LiveSandbox, operation: () => Promise<T>): Promise<T> {
    const run = Promise.all([live.operation?.catch(() => undefined), live.networkUpdate?.catch(() => undefined), live.releasing]).then(operation);
    live.operation = run.catch(() => undefined);
    return run;
  }

  private requireSandbox(sandboxId: string): LiveSandbox {
    const live = this.sandboxes.get(sandboxId);
    if (!live) throw KilnError.notFound(`sandbox ${sandboxId}`);
    return live;
  }

  /**
   * Pause: the VM stops, its device state and the guest pages it changed since its restore point are saved next to
   * its disk layer (keepMemory), and the VMM process, slot and RAM are released. Saving the record as paused is the
   * commit point: a failure before it leaves the sandbox running, after it the sandbox is paused with its artifacts.
   */
  async pause(sandboxId: string, keepMemory: boolean): Promise<PauseReport> {
    const live = this.requireSandbox(sandboxId);
    return this.exclusive(live, async () => {
      if (live.state === 'paused') throw new KilnError(ErrorCode.Conflict, `sandbox ${sandboxId} is already paused`);
      if (live.state !== 'running' || !live.vm || !live.slot) {
        throw new KilnError(ErrorCode.FailedPrecondition, `sandbox ${sandboxId} is ${live.state}; only a running sandbox can be paused`);
      }
      const started = performance.now();
      const { vm, slot } = live;
      const record = live.record;
      const dir = join(record.cloneDir ?? this.records.dirOf(sandboxId), PAUSED_CHECKPOINT_DIR);
      live.state = 'pausing';
      let paused: PausedState;
      try {
        await rm(dir, { recursive: true, force: true });
        await mkdir(dir, { recursive: true, mode: 0o700 });
        let files: Record<string, { path?: string; sha256?: string }> = {};
        let timings: Record<string, number> = {};
        if (keepMemory) {
          const checkpoint = await vm.checkpoint(dir);
          files = checkpointFiles(checkpoint);
          timings = { ...checkpoint.timings, checkpointMs: checkpoint.durationMs };
        } else {
          // What the guest wrote is in its page cache, which this pause drops: it goes to its disk first. A guest
          // that does not answer is paused anyway, with what its disk holds (crash-consistent, as E2B words it).
          await syncGuestFilesystems(slot.hostAddress, GUEST_AGENT_PORT, live.guestConnections, {
            accessToken: record.envdAccessToken,
            timeoutMs: GUEST_SYNC_TIMEOUT_MS,
          }).catch((error) => this.logger.warn(`sync in ${sandboxId} before its pause failed: ${describeError(error)}`));
          // Stopping the vCPUs drains and flushes the disk: the layer is whole once stop returns.
          await vm.pause();
        }
        files[CHECKPOINT_FILES.disk] = { path: relative(dir, record.rootfs.path) };
        const sealed = await this.checkpoints.seal(dir, await this.manifestOf(record, vm, `pause-${sandboxId}`, 'pause', keepMemory, timings), files);
        paused = {
          checkpointDir: dir,
          keepMemory,
          manifestSha256: sealed.manifestSha256,
          pausedAt: new Date().toISOString(),
          memoryBytes: sealed.manifest.files[CHECKPOINT_FILES.memoryPages]?.bytes ?? 0,
          stateBytes: sealed.manifest.files[CHECKPOINT_FILES.deviceState]?.bytes ?? 0,
          diskBytes: (await stat(record.rootfs.path)).blocks * 512,
        };
        await this.records.save({ ...record, paused });
      } catch (error) {
        await rm(dir, { recursive: true, force: true }).catch(() => undefined);
        if (vm.hasExited) throw new KilnError(ErrorCode.Unavailable, `sandbox ${sandboxId} exited while pausing: ${describeError(error)}`);
        await vm.resume().catch((resumeError) => this.logger.warn(`resuming ${sandboxId} after a failed pause failed: ${describeError(resumeError)}`));
        live.state = 'running';
        throw new KilnError(ErrorCode.Unavailable, `pause of ${sandboxId} failed (it is still running): ${describeError(error)}`);
      }
      // Committed. What a paused sandbox does not hold (the VMM with its RAM, the slot) is released right after the
      // answer; the sandbox's next operation, and a destroy, wait for that.
      live.record = { ...record, paused };
      live.stopping = true;
      this.notifyEnding(sandboxId);
      live.vm = undefined;
      live.slot = undefined;
      live.state = 'paused';
      const connections = live.guestConnections;
      live.guestConnections = guestConnectionPool();
      live.releasing = (async () => {
        await vm.kill().catch((error) => this.logger.warn(`kill of paused ${sandboxId} failed: ${describeError(error)}`));
        connections.destroy();
        await this.slots.release(slot).catch((error) => this.logger.warn(`slot release for paused ${sandboxId} failed: ${describeError(error)}`));
        live.stopping = false;
      })();
      void live.releasing.finally(() => {
        live.releasing = undefined;
      });
      const durationMs = performance.now() - started;
      this.pauseSeconds.observe({ memory: String(keepMemory) }, durationMs / 1000);
      this.logger.log(`paused ${sandboxId} in ${durationMs.toFixed(0)} ms (${paused.memoryBytes} B of memory pages, ${paused.stateBytes} B of device state)`);
      return { sandbox: live, paused, durationMs };
    });
  }

  /**
   * Resume: restores the paused sandbox (artifacts verified against its manifest while its VMM starts), re-runs the
   * guest's /init (clock, entropy, token) and applies its egress rules. Clearing `paused` in the record is the commit
   * point; any failure before the sandbox runs leaves it paused with its artifacts intact.
   */
  async resume(sandboxId: string, input: ResumeSandboxInput): Promise<LiveSandbox> {
    const live = this.requireSandbox(sandboxId);
    return this.exclusive(live, async () => {
      if (live.state === 'running') throw new KilnError(ErrorCode.Conflict, `sandbox ${sandboxId} is already running`);
      const paused = live.record.paused;
      if (live.state !== 'paused' || !paused) throw new KilnError(ErrorCode.FailedPrecondition, `sandbox ${sandboxId} is ${live.state}; only a paused sandbox can be resumed`);
      const egress = this.checkEgress(input.egress ?? live.record.egress);
      const manifest = await this.readCheckpoint(paused.checkpointDir);
      this.reserveCapacity(sandboxId, live.record.vcpus, live.record.memoryMib);
      const pausedRecord = live.record;
      live.state = 'resuming';
      const started = performance.now();
      let slot: NetworkSlot | undefined;
      let vm: VmHandle | undefined;
      try {
        slot = await this.slots.acquire();
        const rootDisk: VmDiskSpec = { path: pausedRecord.rootfs.path, format: pausedRecord.rootfs.format };
        const placement = { id: vmIdOf(pausedRecord), stateDir: pausedRecord.vmStateDir, serialLogPath: pausedRecord.serialLogPath, rootDisk, slot };
        if (manifest.keepMemory) {
          vm = await this.restoreCheckpoint(paused.checkpointDir, manifest, placement);
        } else {
          await this.checkpoints.verify(paused.checkpointDir, manifest);
          vm = await this.coldBoot(pausedRecord, placement);
        }
        const record: SandboxRecord = {
          ...pausedRecord,
          paused: undefined,
          slotIndex: slot.index,
          egress: egress.policy,
          envdAccessToken: input.envdAccessToken || pausedRecord.envdAccessToken,
          timeoutSeconds: input.timeoutSeconds || pausedRecord.timeoutSeconds,
        };
        delete record.paused;
        await this.records.save(record);
        live.record = record;
        live.vm = vm;
        live.slot = slot;
        this.watchExit(live, vm);
        await this.bringUp(live, vm, slot, egress, {
          // A guest restored from memory holds the token it had when paused; a cold-booted one holds none.
          currentAccessToken: manifest.keepMemory ? pausedRecord.envdAccessToken : undefined,
          resumed: !manifest.keepMemory,
        });
      } catch (error) {
        live.stopping = true;
        this.notifyEnding(sandboxId);
        if (vm && !vm.hasExited) await vm.kill().catch(() => undefined);
        live.guestConnections.destroy();
        live.guestConnections = guestConnectionPool();
        if (slot) await this.slots.release(slot).catch(() => undefined);
        await this.records.save(pausedRecord).catch((saveError) => this.logger.error(`re-saving ${sandboxId} as paused failed: ${describeError(saveError)}`));
        live.record = pausedRecord;
        live.vm = undefined;
        live.slot = undefined;
        live.stopping = false;
        live.state = 'paused';
        this.logger.warn(`resume of ${sandboxId} failed; it stays paused: ${describeError(error)}; guest console tail: ${await consoleTail(pausedRecord.serialLogPath)}`);
        if (error instanceof KilnError) throw error;
        if (error instanceof SlotsExhaustedError) throw new KilnError(ErrorCode.ResourceExhausted, 'no free network slot on this host');
        throw new KilnError(ErrorCode.Unavailable, `resume of ${sandboxId} failed (it is still paused): ${describeError(error)}`);
      }
      // The pages are in the VMM now: a pause over this one keeps only what it needs, in a checkpoint of its own.
      await this.checkpoints.remove(paused.checkpointDir).catch(() => undefined);
      live.state = 'running';
      this.liveGauge.set(this.sandboxes.size);
      const durationMs = performance.now() - started;
      this.resumeSeconds.observe({ memory: String(manifest.keepMemory) }, durationMs / 1000);
      this.logger.log(`resumed ${sandboxId} in ${durationMs.toFixed(0)} ms`);
      return live;
    });
  }

  /**
   * Fork: checkpoints the running source in place (stopped only while its state and changed pages are written and
   * its disk layer copied, then running again with its id) and starts each target from that checkpoint. Each fork
   * succeeds or fails on its own.
   */
  async fork(sourceId: string, targets: CreateSandboxInput[]): Promise<ForkReport> {
    const live = this.requireSandbox(sourceId);
    const dir = await this.checkpoints.newForkDir();
    try {
      const taken = await this.exclusive(live, () => this.checkpointInPlace(live, dir, `fork-${basename(dir)}`, 'fork'));
      // Started side by side, a few at a time: each is mostly waiting (a qemu-img, a VMM's start-up, the guest's
      // /init), so their waits overlap; more at once would only queue on the cores.
      const results: ForkReport['results'] = new Array(targets.length);
      let next = 0;
      const startNext = async (): Promise<void> => {
        for (let index = next++; index < targets.length; index = next++) {
          const target = targets[index];
          try {
            results[index] = { sandboxId: target.sandboxId, sandbox: await this.createFromCheckpoint(target, dir, taken.manifest, live.record.envdAccessToken) };
          } catch (error) {
            results[index] = { sandboxId: target.sandboxId, error: error instanceof KilnError ? error : new KilnError(ErrorCode.Unavailable, describeError(error)) };
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(FORK_CONCURRENCY, targets.length) }, startNext));
      return { results, checkpointMs: taken.stoppedMs };
    } finally {
      this.checkpoints.unpin(dir);
      void this.collectCheckpoints();
    }
  }

  /** A named snapshot of a running sandbox, taken in place; it outlives the sandbox (DeleteSnapshot removes it). */
  async createSnapshot(sandboxId: string, snapshotId: string): Promise<SnapshotReport> {
    const live = this.requireSandbox(sandboxId);
    let dir: string;
    try {
      dir = this.checkpoints.snapshotDir(snapshotId);
    } catch (error) {
      throw new KilnError(ErrorCode.InvalidArgument, describeError(error));
    }
    this.checkpoints.pin(dir);
    try {
      if (await pathExists(dir)) throw new KilnError(ErrorCode.AlreadyExists, `snapshot ${snapshotId} already exists on this host`);
      await mkdir(dir, { recursive: true, mode: 0o755 });
      const taken = await this.exclusive(live, () => this.checkpointInPlace(live, dir, snapshotId, 'snapshot', live.record.envdAccessToken));
      const sizeBytes = Object.values(taken.manifest.files).reduce((sum, f) => sum + f.bytes, 0);
      return { snapshotId, manifest: taken.manifest, manifestSha256: taken.manifestSha256, sizeBytes, stoppedMs: taken.stoppedMs };
    } catch (error) {
      if (!(error instanceof KilnError && error.code === ErrorCode.AlreadyExists)) await this.checkpoints.remove(dir).catch(() => undefined);
      throw error;
    } finally {
      this.checkpoints.unpin(dir);
    }
  }

  /** Deletes a named snapshot; its files go once no sandbox's disk backs onto them. False when there was none. */
  async deleteSnapshot(snapshotId: string): Promise<boolean> {
    let dir: string;
    try {
      dir = this.checkpoints.snapshotDir(snapshotId);
    } catch (error) {
      throw new KilnError(ErrorCode.InvalidArgument, describeError(error));
    }
    const existed = await this.checkpoints.markDeleted(dir);
    await this.collectCheckpoints();
    return existed;
  }

  /** Stops the sandbox, writes a checkpoint of it into `dir` (with a copy of its disk layer), and runs it again. */
  private async checkpointInPlace(
    live: LiveSandbox,
    dir: string,
    id: string,
    kind: CheckpointKind,
    accessToken?: string,
  ): Promise<{ manifest: CheckpointManifest; manifestSha256: string; stoppedMs: number }> {
    const sandboxId = live.record.sandboxId;
    if (live.state !== 'running' || !live.vm) {
      throw new KilnError(ErrorCode.FailedPrecondition, `sandbox ${sandboxId} is ${live.state}; only a running sandbox can be ${kind === 'fork' ? 'forked' : 'snapshotted'}`);
    }
    const vm = live.vm;
    const record = live.record;
    const started = performance.now();
    let checkpoint: VmCheckpoint;
    try {
      checkpoint = await vm.checkpoint(dir);
      // The VM is stopped and its disk flushed: the layer's copy is the disk the memory saw.
      await copyFile(record.rootfs.path, join(dir, CHECKPOINT_FILES.disk));
    } catch (error) {
      throw new KilnError(ErrorCode.Unavailable, `checkpoint of ${sandboxId} failed: ${describeError(error)}`);
    } finally {
      if (!vm.hasExited) await vm.resume().catch((error) => this.logger.warn(`resuming ${sandboxId} after its checkpoint failed: ${describeError(error)}`));
    }
    const stoppedMs = performance.now() - started;
    const files = { ...checkpointFiles(checkpoint), [CHECKPOINT_FILES.disk]: {} };
    const manifest = await this.manifestOf(record, vm, id, kind, true, { ...checkpoint.timings, stoppedMs }, accessToken);
    const sealed = await this.checkpoints.seal(dir, manifest, files);
    this.logger.log(`checkpoint ${id} of ${sandboxId}: stopped ${stoppedMs.toFixed(0)} ms, ${checkpoint.changedMemory.bytes} B of changed memory`);
    return { ...sealed, stoppedMs };
  }

  private async manifestOf(
    record: SandboxRecord,
    vm: VmHandle,
    id: string,
    kind: CheckpointKind,
    keepMemory: boolean,
    timings: Record<string, number>,
    accessToken?: string,
  ): Promise<Omit<CheckpointManifest, 'files' | 'formatVersion'>> {
    const spec = vm.spec;
    return {
      id,
      kind,
      sourceSandboxId: record.sandboxId,
      teamId: record.teamId,
      templateId: record.templateId,
      buildId: record.buildId,
      keepMemory,
      vm: checkpointVmShape(spec, await memoryFileIdentity(spec.memoryFile?.path ?? ''), GUEST_AGENT_PORT),
      ...(record.diskCheckpointDir ? { diskBackingCheckpointDir: record.diskCheckpointDir } : {}),
      ...(accessToken ? { accessTokenSealed: this.sealer.seal(id, accessToken) } : {}),
      createdAt: new Date().toISOString(),
      timings: Object.fromEntries(Object.entries(timings).map(([k, v]) => [k, Math.round(v * 10) / 10])),
    };
  }

  private async readCheckpoint(dir: string): Promise<CheckpointManifest> {
    try {
      return await this.checkpoints.read(dir);
    } catch (error) {
      if (error instanceof CheckpointNotFoundError) throw new KilnError(ErrorCode.FailedPrecondition, error.message);
      if (error instanceof CheckpointCorruptError) throw new KilnError(ErrorCode.FailedPrecondition, `refused to restore: ${error.message}`);
      throw error;
    }
  }

  /** Starts the checkpoint's VM on `placement`, verifying the checkpoint while the VMM process starts. */
  private async restoreCheckpoint(dir: string, manifest: CheckpointManifest, placement: VmPlacement): Promise<VmHandle> {
    const identity = await memoryFileIdentity(manifest.vm.memoryFilePath);
    if (identity !== manifest.vm.memoryFileIdentity) {
      throw new KilnError(
        ErrorCode.FailedPrecondition,
        `refused to restore checkpoint ${manifest.id}: the memory file it was taken against (${manifest.vm.memoryFilePath}) is gone or holds other content now`,
      );
    }
    const spec = checkpointVmSpec(manifest, placement);
    const files = manifest.files;
    const ref = {
      statePath: this.checkpoints.filePath(dir, CHECKPOINT_FILES.deviceState, files[CHECKPOINT_FILES.deviceState]?.path),
      changedMemory: {
        pagesPath: this.checkpoints.filePath(dir, CHECKPOINT_FILES.memoryPages, files[CHECKPOINT_FILES.memoryPages]?.path),
        indexPath: this.checkpoints.filePath(dir, CHECKPOINT_FILES.memoryIndex, files[CHECKPOINT_FILES.memoryIndex]?.path),
      },
    };
    const [prepared, verified] = await Promise.allSettled([this.vmm.prepareRestore(spec, ref, { startPaused: true }), this.checkpoints.verify(dir, manifest)]);
    if (verified.status === 'rejected') {
      if (prepared.status === 'fulfilled') await prepared.value.handle.kill().catch(() => undefined);
      const error = verified.reason as unknown;
      throw error instanceof CheckpointCorruptError ? new KilnError(ErrorCode.FailedPrecondition, `refused to restore: ${error.message}`) : error;
    }
    if (prepared.status === 'rejected') throw prepared.reason;
    return prepared.value.start();
  }

  /**
   * A sandbox paused without its memory boots again from its disk: its template's kernel, guest RAM on a private
   * mapping of an all-zero file (so that it can be checkpointed like any clone), up once its agent answers.
   */
  private async coldBoot(record: SandboxRecord, placement: VmPlacement): Promise<VmHandle> {
    const build = await this.templates.resolve(record.templateId, record.buildId);
    const zeroMemory = await this.zeroMemoryFile(build.memoryMib);
    const vm = await this.vmm.spawn(
      coldBootSpec(build, { id: placement.id, rootDisk: placement.rootDisk, slot: placement.slot, stateDir: placement.stateDir, serialLogPath: placement.serialLogPath, memoryFile: { path: zeroMemory, share: false } }),
    );
    try {
      await waitForGuestAgent(placement.slot.hostAddress, build.agentPort ?? GUEST_AGENT_PORT, { timeoutMs: COLD_BOOT_TIMEOUT_MS });
    } catch (error) {
      await vm.kill().catch(() => undefined);
      throw error;
    }
    return vm;
  }

  /** A sparse file of `memoryMib` MiB of zeros (made once per size); nothing ever writes it. */
  private async zeroMemoryFile(memoryMib: number): Promise<string> {
    const path = join(this.env.KILN_DATA_DIR, 'vmm', 'zero-memory', `${memoryMib}M`);
    if ((await stat(path).catch(() => undefined))?.size === memoryMib * 1024 * 1024) return path;
    await mkdir(dirname(path), { recursive: true });
    const partial = `${path}.${randomBytes(4).toString('hex')}`;
    await writeFile(partial, '');
    await truncate(partial, memoryMib * 1024 * 1024);
    await chmod(partial, 0o644);
    await rename(partial, path);
    return path;
  }

  /** A new sandbox from a fork's or named snapshot's checkpoint, started like a create (same record, same teardown). */
  private async createFromCheckpoint(input: CreateSandboxInput, dir: string, manifest: CheckpointManifest, currentAccessToken: string | undefined): Promise<LiveSandbox> {
    if (!SANDBOX_ID.test(input.sandboxId)) throw new KilnError(ErrorCode.InvalidArgument, 'sandbox_id must be 1-64 lowercase letters, digits or dashes');
    if (this.sandboxes.has(input.sandboxId)) throw new KilnError(ErrorCode.AlreadyExists, `sandbox ${input.sandboxId} already exists on this host`);
    const egress = this.checkEgress(input.egress);
    const t0 = performance.now();
    const live = this.placeStarting(input.sandboxId, manifest.vm.vcpus, manifest.vm.memoryMib);
    this.checkpoints.pin(dir);
    const starting = this.start(
      live,
      {
        templateId: manifest.templateId,
        buildId: manifest.buildId,
        diskCheckpointDir: dir,
        currentAccessToken,
        take: async () => {
          const clone = await this.clones.newCloneDirectory();
          let slot: NetworkSlot | undefined;
          let layer: RootfsLayer | undefined;
          try {
            const [slotResult, layerResult] = await Promise.allSettled([
              this.slots.acquire(),
              this.layers.createLayer(clone.cloneId, { path: join(dir, CHECKPOINT_FILES.disk), format: 'qcow2' }, clone.dir),
            ]);
            if (slotResult.status === 'fulfilled') slot = slotResult.value;
            if (layerResult.status === 'fulfilled') layer = layerResult.value;
            if (slotResult.status === 'rejected') throw slotResult.reason;
            if (layerResult.status === 'rejected') throw layerResult.reason;
            const vm = await this.restoreCheckpoint(dir, manifest, {
              id: clone.cloneId,
              stateDir: clone.vmStateDir,
              serialLogPath: clone.serialLogPath,
              rootDisk: { path: layer!.path, format: layer!.format },
              slot: slot!,
            });
            return { clone: { ...clone, vm, slot: slot!, layer: layer! }, source: manifest.kind };
          } catch (error) {
            if (slot) await this.slots.release(slot).catch(() => undefined);
            await rm(clone.dir, { recursive: true, force: true }).catch(() => undefined);
            throw error;
          }
        },
      },
      input,
      egress,
      t0,
    );
    live.started = starting.catch(() => undefined);
    try {
      return await starting;
    } finally {
      this.checkpoints.unpin(dir);
    }
  }

  /** A create with snapshot_id: the named snapshot, verified, restored into a new sandbox. */
  private async createFromSnapshot(input: CreateSandboxInput & { snapshotId: string }): Promise<LiveSandbox> {
    let dir: string;
    try {
      dir = this.checkpoints.snapshotDir(input.snapshotId);
    } catch (error) {
      throw new KilnError(ErrorCode.InvalidArgument, describeError(error));
    }
    if (await this.checkpoints.isDeleted(dir)) throw new KilnError(ErrorCode.FailedPrecondition, `snapshot ${input.snapshotId} was deleted`);
    const manifest = await this.readCheckpoint(dir);
    if (manifest.templateId !== input.templateId || manifest.buildId !== input.buildId) {
      throw new KilnError(
        ErrorCode.FailedPrecondition,
        `snapshot ${input.snapshotId} is of ${manifest.templateId}/${manifest.buildId}, not ${input.templateId}/${input.buildId}`,
      );
    }
    if ((input.vcpus && input.vcpus !== manifest.vm.vcpus) || (input.memoryMib && input.memoryMib !== manifest.vm.memoryMib)) {
      throw new KilnError(ErrorCode.FailedPrecondition, `snapshot ${input.snapshotId} restores with ${manifest.vm.vcpus} vCPUs and ${manifest.vm.memoryMib} MiB`);
    }
    const token = manifest.accessTokenSealed ? this.sealer.open(manifest.id, manifest.accessTokenSealed) : undefined;
    return this.createFromCheckpoint(input, dir, manifest, token);
  }

  /** Removes checkpoints no live or paused sandbox (and no kept snapshot) needs any more. */
  private async collectCheckpoints(): Promise<void> {
    const referenced = [...this.sandboxes.values()].flatMap((live) => (live.record.diskCheckpointDir ? [live.record.diskCheckpointDir] : []));
    try {
      const removed = await this.checkpoints.collectGarbage(referenced);
      if (removed.length > 0) this.logger.log(`removed ${removed.length} checkpoint(s) nothing references`);
    } catch (error) {
      this.logger.warn(`collecting unreferenced checkpoints failed: ${describeError(error)}`);
    }
  }

  private notifyEnding(sandboxId: string): void {
    for (const listener of this.endingListeners) {
      try {
        listener(sandboxId);
      } catch (error) {
        this.logger.warn(`a sandbox-ending listener failed for ${sandboxId}: ${describeError(error)}`);
      }
    }
  }

  /** Idempotent: returns false when the sandbox was not here. */
  async destroy(sandboxId: string): Promise<boolean> {
    const live = this.sandboxes.get(sandboxId);
    if (!live) return false;
    if (live.state === 'starting' && live.startAbort) {
      // The create owns its resources until it finishes: stop it, and let its failure path remove them.
      live.startAbort.abort(new DestroyedWhileStartingError());
      await live.started;
      this.publish('destroyed', live.record, 'destroyed while starting');
      return true;
    }
    if (live.state === 'stopping') {
      await live.vm?.exited;
      return true;
    }
    if (live.state === 'pausing' || live.state === 'resuming' || live.releasing) {
      // Each ends running or paused, its resources accounted for: the destroy then removes whichever it is.
      await Promise.all([live.operation, live.releasing]);
      return this.destroy(sandboxId);
    }
    live.state = 'stopping';
    live.stopping = true;
    await this.teardown(sandboxId, live.vm, live.slot, live.record.rootfs ? { path: live.record.rootfs.path } : undefined, live.record.cloneDir);
    this.publish('destroyed', live.record, 'destroyed on request');
    return true;
  }

  /** Reserves the host's room for a sandbox being started and puts it in the map as starting (its create owns it). */
  private placeStarting(sandboxId: string, vcpus: number, memoryMib: number): LiveSandbox {
    this.reserveCapacity(sandboxId, vcpus, memoryMib);
    const live: LiveSandbox = {
      record: { sandboxId, vcpus, memoryMib } as SandboxRecord,
      state: 'starting',
      stopping: false,
      guestConnections: guestConnectionPool(),
      startAbort: new AbortController(),
    };
    this.sandboxes.set(sandboxId, live);
    return live;
  }

  private reserveCapacity(sandboxId: string, vcpus: number, memoryMib: number): void {
    const used = this.usage();
    if (used.sandboxes + 1 > this.capacity.sandboxes || used.vcpus + vcpus > this.capacity.vcpus || used.memoryMib + memoryMib > this.capacity.memoryMib) {
      throw new KilnError(
        ErrorCode.ResourceExhausted,
        `host is full (sandboxes ${used.sandboxes}/${this.capacity.sandboxes}, vcpus ${used.vcpus}/${this.capacity.vcpus}, memory ${used.memoryMib}/${this.capacity.memoryMib} MiB); cannot place ${sandboxId}`,
      );
    }
  }

  /** Removes whatever exists of a sandbox, in reverse order of creation; never throws. */
  private async teardown(sandboxId: string, vm?: VmHandle, slot?: NetworkSlot, layer?: Pick<RootfsLayer, 'path'>, cloneDir?: string): Promise<void> {
    this.notifyEnding(sandboxId);
    this.sandboxes.get(sandboxId)?.guestConnections.destroy();
    if (vm && !vm.hasExited) await vm.kill().catch((error) => this.logger.warn(`kill of ${sandboxId} failed: ${describeError(error)}`));
    await this.removeDisk({ sandboxId, rootfs: layer, cloneDir });
    if (slot) await this.slots.release(slot).catch((error) => this.logger.warn(`slot release for ${sandboxId} failed: ${describeError(error)}`));
    await this.records.remove(sandboxId).catch(() => undefined);
    const hadCheckpoint = this.sandboxes.get(sandboxId)?.record.diskCheckpointDir !== undefined;
    this.sandboxes.delete(sandboxId);
    this.liveGauge.set(this.sandboxes.size);
    // A fork's or deleted snapshot's checkpoint goes with the last sandbox whose disk backs onto it.
    if (hadCheckpoint) await this.collectCheckpoints();
  }

  /** The sandbox's disk layer, and the clone directory holding it (VM state, serial log) when it has one. */
  private async removeDisk(owner: { sandboxId: string; rootfs?: Pick<RootfsLayer, 'path'>; cloneDir?: string }): Promise<void> {
    if (owner.cloneDir) {
      await rm(owner.cloneDir, { recursive: true, force: true }).catch((error) => this.logger.warn(`removing ${owner.cloneDir} failed: ${describeError(error)}`));
      return;
    }
    // Records from before clone directories: the layer sits in the sandbox's own directory, named after it.
    if (owner.rootfs) {
      await this.layers
        .removeLayer({ path: owner.rootfs.path, sandboxId: owner.sandboxId })
        .catch((error) => this.logger.warn(`layer removal for ${owner.sandboxId} failed: ${describeError(error)}`));
    }
  }

  /** A VM that ends on its own (guest poweroff, qemu crash, kill -9) is cleaned up and reported at once. */
  private watchExit(live: LiveSandbox, vm: VmHandle): void {
    void vm.exited.then(async (exit: VmExit) => {
      if (live.stopping) return;
      if (live.state === 'starting' && live.startAbort) {
        // The create is still waiting on the guest: end it now rather than at its deadline; it cleans up.
        live.startAbort.abort(vmExitedWhileStarting(exit));
        return;
      }
      live.stopping = true;
      live.state = 'stopping';
      const crashed = exit.signal !== null || (exit.code !== null && exit.code !== 0) || exit.code === null;
      const reason = `VM exited (${exit.reason}${exit.signal ? `, ${exit.signal}` : ''}${exit.code !== null ? `, code ${exit.code}` : ''})`;
      this.logger.warn(`sandbox ${live.record.sandboxId}: ${reason}`);
      await this.teardown(live.record.sandboxId, undefined, live.slot, live.record.rootfs ? { path: live.record.rootfs.path } : undefined, live.record.cloneDir);
      this.publish(crashed ? 'crashed' : 'exited', live.record, reason, exit.code ?? undefined);
    });
  }

  /** `sandbox`: its record, or a create's input before any record exists (create_failed). */
  private publish(kind: SandboxLifecycleKind, sandbox: Pick<SandboxRecord, 'sandboxId' | 'teamId'>, reason?: string, exitCode?: number): void {
    void this.events
      .publish({ kind, sandboxId: sandbox.sandboxId, teamId: sandbox.teamId, hostId: this.hostId, reason, exitCode, at: new Date().toISOString() }, { hostId: this.hostId })
      .catch((error) => this.logger.warn(`publishing ${kind} for ${sandbox.sandboxId} failed: ${describeError(error)}`));
  }

  get hostId(): string {
    return this.env.KILN_HOST_ID ?? hostname();
  }

  /** Agent shutdown leaves VMs running (they are adopted on restart); only control connections close. */
  onApplicationShutdown(): void {
    this.snapshotReadiness.close();
    for (const live of this.sandboxes.values()) {
      live.stopping = true;
      live.vm?.detach();
    }
  }
}
