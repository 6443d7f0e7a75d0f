import { randomBytes } from 'node:crypto';
import { Agent } from 'node:http';
import { hostname } from 'node:os';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Inject, Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { ErrorCode, KilnError, type EgressPolicy } from '@kiln/contracts';
import { GUEST_ENTROPY_SEED_BYTES } from '@kiln/contracts/guest-init';
import { HostAgentEnv, describeError, ipListEntries } from '@kiln/config';
import { SandboxEventStream, SandboxLifecycleKind } from '@kiln/messaging';
import { MetricsRegistry } from '@kiln/telemetry';
import { ClonePool, type RestoredClone } from '../clone-pool';
import {
  EgressProxyNotConfiguredError,
  InvalidEgressPolicyError,
  NetworkSlot,
  NetworkSlotPool,
  SlotsExhaustedError,
  type AppliedEgressPolicy,
} from '../network';
import { RootfsLayer, RootfsLayers } from '../rootfs';
import { SnapshotError, TemplateNotReadyError, TemplateSnapshot, TemplateSnapshotReadiness, TemplateSnapshots, type TemplateSnapshotStatus } from '../snapshot';
import { InvalidTemplateIdError, TemplateNotFoundError, TemplateStore } from '../template';
import { VMM_DRIVER, VmExit, VmHandle, VmmDriver } from '../vmm';
import { initGuestAgent } from '../guest-agent-client';
import { HostCapacity, hostCapacityFrom } from './host-capacity';
import { RecordSealer } from './record-sealer';
import { SandboxRecord, SandboxRecordStore } from './sandbox-record';

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
  /**
   * How long this create may wait for the build's snapshot while it is being made (the gRPC call's remaining
   * deadline); default KILN_CREATE_TEMPLATE_WAIT_SECONDS.
   */
  templateWaitMs?: number;
}

export type LiveSandboxState = 'starting' | 'running' | 'stopping';

export interface LiveSandbox {
  record: SandboxRecord;
  state: LiveSandboxState;
  slot: NetworkSlot;
  vm?: VmHandle;
  /** Set when the agent itself is ending the VM, so its exit is not reported as a crash. */
  stopping: boolean;
  /** While starting: aborted by a destroy or by the VM's exit, which ends the create (and its teardown). */
  startAbort?: AbortController;
  /** While starting: settles when the create has finished, either way. */
  started?: Promise<unknown>;
  /** The last egress-policy update, so updates of one sandbox apply in the order they came. */
  networkUpdate?: Promise<unknown>;
  /**
   * Keep-alive connections to this sandbox's guest. Per sandbox, because slots are reused:
   * a pooled socket to a dead guest at the same address must never serve the next one.
   */
  guestConnections: Agent;
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
    this.records = new SandboxRecordStore(join(env.KILN_DATA_DIR, 'sandboxes'), new RecordSealer(env.KILN_HOST_STATE_KEY ?? env.HOST_REGISTRATION_TOKEN));
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
    for (const { sandboxId, record, tokenUnreadable } of found) {
      if (!record) {
        await this.records.remove(sandboxId);
        continue;
      }
      if (tokenUnreadable) this.logger.warn(`sandbox ${sandboxId}: its envd token is unreadable (${tokenUnreadable}); only /health reaches it`);
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
    await this.clones.reconcile(new Set(adopted.flatMap((a) => (a.record.cloneDir ? [a.record.cloneDir] : []))));
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
      this.logger.log(`adopted sandbox ${record.sandboxId} (pid ${vm.pid}, slot ${record.slotIndex})`);
    }
    this.liveGauge.set(this.sandboxes.size);
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

  usage(): HostCapacity {
    let vcpus = 0;
    let memoryMib = 0;
    for (const { record } of this.sandboxes.values()) {
      vcpus += record.vcpus;
      memoryMib += record.memoryMib;
    }
    return { vcpus, memoryMib, sandboxes: this.sandboxes.size };
  }

  async create(input: CreateSandboxInput): Promise<LiveSandbox> {
    if (!SANDBOX_ID.test(input.sandboxId)) throw new KilnError(ErrorCode.InvalidArgument, 'sandbox_id must be 1-64 lowercase letters, digits or dashes');
    if (!input.templateId) throw new KilnError(ErrorCode.InvalidArgument, 'template_id is required');
    if (!input.buildId) throw new KilnError(ErrorCode.InvalidArgument, 'build_id is required');
    if (this.sandboxes.has(input.sandboxId)) throw new KilnError(ErrorCode.AlreadyExists, `sandbox ${input.sandboxId} already exists on this host`);
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
    this.reserveCapacity(input.sandboxId, vcpus, memoryMib);

    const live: LiveSandbox = {
      record: { sandboxId: input.sandboxId, vcpus, memoryMib } as SandboxRecord,
      state: 'starting',
      slot: undefined as unknown as NetworkSlot,
      stopping: false,
      guestConnections: guestConnectionPool(),
      startAbort: new AbortController(),
    };
    this.sandboxes.set(input.sandboxId, live);
    const starting = this.start(live, snapshot, input, egress, t0);
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
  private async start(
    live: LiveSandbox,
    snapshot: TemplateSnapshot,
    input: CreateSandboxInput,
    egress: AppliedEgressPolicy,
    t0: number,
  ): Promise<LiveSandbox> {
    const { sandboxId } = input;
    const abort = live.startAbort!.signal;
    let clone: RestoredClone | undefined;
    let source = 'restored';
    try {
      const t1 = performance.now();
      const taken = await this.clones.take(snapshot);
      clone = taken.clone;
      source = taken.pooled ? 'pooled' : 'restored';
      abort.throwIfAborted();
      const t2 = performance.now();
      await this.records.prepare(sandboxId);
      const record: SandboxRecord = {
        sandboxId,
        teamId: input.teamId,
        templateId: snapshot.build.templateId,
        buildId: snapshot.build.buildId,
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
      };
      // From here the clone belongs to this sandbox: a restarted agent finds it through the record.
      await this.records.save(record);
      live.record = record;
      live.slot = clone.slot;
      live.vm = clone.vm;
      this.watchExit(live, clone.vm);
      const tRecorded = performance.now();
      await clone.vm.resume();
      const t4 = performance.now();
      // The slot was leased closed (nothing leaves it but DNS to the platform's resolvers), so the guest may run
      // before its own rules are in: they go in while the guest agent takes its /init (under TCG that is tens of ms,
      // about as long as an nft commit), and the create returns only once both are done.
      let egressMs = 0;
      const [applied, initialised] = await Promise.allSettled([
        this.slots.setEgressPolicy(clone.slot, egress.policy).then(() => (egressMs = performance.now() - t4)),
        initGuestAgent(
          clone.slot.hostAddress,
          live.guestConnections,
          {
            accessToken: record.envdAccessToken,
            envVars: input.envVars,
            timestamp: new Date().toISOString(),
            entropySeed: randomBytes(GUEST_ENTROPY_SEED_BYTES.sent).toString('base64'),
            nameservers: this.nameservers,
          },
          // Part of the create deadline chain (SANDBOX_*_MS in the shared config), shorter than the scheduler's.
          this.env.SANDBOX_GUEST_INIT_DEADLINE_MS,
          { signal: abort },
        ),
      ]);
      // Both settle before any failure is handled: teardown must not release the slot under a running nft update.
      if (initialised.status === 'rejected') throw initialised.reason;
      if (applied.status === 'rejected') throw applied.reason;
      const t5 = performance.now();
      live.state = 'running';
      live.startAbort = undefined;
      this.liveGauge.set(this.sandboxes.size);
      const observe = (phase: string, ms: number) => this.createSeconds.observe({ phase, clone: source }, ms / 1000);
      observe('clone', t2 - t1);
      observe('record', tRecorded - t2);
      observe('resume', t4 - tRecorded);
      observe('egress', egressMs);
      observe('guest-init', t5 - t4);
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
      if ((exit || abort.aborted) && cause instanceof KilnError) throw new KilnError(cause.code, `sandbox ${sandboxId} did not start: ${reason}`);
      if (error instanceof SlotsExhaustedError) throw new KilnError(ErrorCode.ResourceExhausted, 'no free network slot on this host');
      if (error instanceof KilnError) throw error;
      throw new KilnError(ErrorCode.Unavailable, `sandbox ${sandboxId} failed to start: ${describeError(error)}`);
    }
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
        await this.slots.setEgressPolicy(live.slot, egress.policy);
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

  /** Idempotent: returns false when the sandbox was not here. */
  async destroy(sandboxId: string): Promise<boolean> {
    const live = this.sandboxes.get(sandboxId);
    if (!live) return false;
    if (live.state === 'starting' && live.startAbort) {
      // The create owns its resources until it finishes: stop it, and let its failure path remove them.
      live.startAbort.abort(new KilnError(ErrorCode.Conflict, 'destroyed while starting'));
      await live.started;
      this.publish('destroyed', live.record, 'destroyed while starting');
      return true;
    }
    if (live.state === 'stopping') {
      await live.vm?.exited;
      return true;
    }
    live.state = 'stopping';
    live.stopping = true;
    await this.teardown(sandboxId, live.vm, live.slot, live.record.rootfs ? { path: live.record.rootfs.path } : undefined, live.record.cloneDir);
    this.publish('destroyed', live.record, 'destroyed on request');
    return true;
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
    for (const listener of this.endingListeners) {
      try {
        listener(sandboxId);
      } catch (error) {
        this.logger.warn(`a sandbox-ending listener failed for ${sandboxId}: ${describeError(error)}`);
      }
    }
    this.sandboxes.get(sandboxId)?.guestConnections.destroy();
    if (vm && !vm.hasExited) await vm.kill().catch((error) => this.logger.warn(`kill of ${sandboxId} failed: ${describeError(error)}`));
    await this.removeDisk({ sandboxId, rootfs: layer, cloneDir });
    if (slot) await this.slots.release(slot).catch((error) => this.logger.warn(`slot release for ${sandboxId} failed: ${describeError(error)}`));
    await this.records.remove(sandboxId).catch(() => undefined);
    this.sandboxes.delete(sandboxId);
    this.liveGauge.set(this.sandboxes.size);
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

  private publish(kind: SandboxLifecycleKind, record: SandboxRecord, reason?: string, exitCode?: number): void {
    void this.events
      .publish({ kind, sandboxId: record.sandboxId, teamId: record.teamId, hostId: this.hostId, reason, exitCode, at: new Date().toISOString() }, { hostId: this.hostId })
      .catch((error) => this.logger.warn(`publishing ${kind} for ${record.sandboxId} failed: ${describeError(error)}`));
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
