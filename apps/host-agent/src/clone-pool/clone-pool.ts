import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Inject, Injectable, Logger, type OnApplicationShutdown, type OnModuleDestroy } from '@nestjs/common';
import { describeError } from '@kiln/config';
import { MetricsRegistry } from '@kiln/telemetry';
import { warmGuestAgent } from '../guest-agent-client';
import { GUEST_AGENT_PORT, NetworkSlotPool, type NetworkSlot } from '../network';
import { RootfsLayers, type RootfsLayer } from '../rootfs';
import { TemplateSnapshots, type TemplateSnapshot } from '../snapshot';
import { VMM_DRIVER, type VmHandle, type VmmDriver } from '../vmm';
import { CLONE_SERIAL_LOG, CLONE_VM_STATE_DIR, removeUnclaimedClones } from './clone-directories';
import { CLONE_POOL_OPTIONS, type ClonePoolOptions } from './clone-pool.options';
import type { RestoredClone } from './restored-clone';

const REFILL_RETRY_MS = 5_000;
const SWEEP_INTERVAL_MS = 60_000;
/** A pooled clone's warm-up; generous because on a busy TCG host a first command can take seconds. */
const WARM_UP_TIMEOUT_MS = 60_000;

/** The warm clones of one template build. */
interface WarmBuild {
  snapshot: TemplateSnapshot;
  ready: RestoredClone[];
  /** A refill is restoring a clone for this build. */
  filling: boolean;
  lastWantedAt: number;
  retryTimer?: NodeJS.Timeout;
}

/**
 * Keeps a few clones of each template in use restored and paused (and, with `warm`, warmed first), so that
 * creating a sandbox takes one (resume + /init) instead of starting a VMM, loading device state and making a disk
 * layer and network slot on the request path; a warmed clone's first requests also run code that is already
 * translated. A miss restores a clone on the spot (never warmed: that would only move the cost). Clones in the
 * pool belong to the pool; take() hands one over for good, and from then on its taker tears it down.
 */
@Injectable()
export class ClonePool implements OnModuleDestroy, OnApplicationShutdown {
  private readonly logger = new Logger(ClonePool.name);
  /** Keyed by snapshot directory: one entry per template build. */
  private readonly builds = new Map<string, WarmBuild>();
  private readonly takes;
  private readonly readyGauge;
  private sweepTimer?: NodeJS.Timeout;
  private closed = false;

  constructor(
    @Inject(CLONE_POOL_OPTIONS) private readonly options: ClonePoolOptions,
    @Inject(TemplateSnapshots) private readonly snapshots: TemplateSnapshots,
    @Inject(NetworkSlotPool) private readonly slots: NetworkSlotPool,
    @Inject(RootfsLayers) private readonly layers: RootfsLayers,
    @Inject(VMM_DRIVER) private readonly vmm: VmmDriver,
    @Inject(MetricsRegistry) metrics: MetricsRegistry,
  ) {
    this.takes = metrics.counter('kiln_agent_clone_pool_takes_total', 'Sandbox creates by where their clone came from', ['source']);
    this.readyGauge = metrics.gauge('kiln_agent_clone_pool_ready', 'Restored clones waiting in the pool');
  }

  /**
   * A paused clone of `snapshot`: from the pool when one is ready, else restored now. Does not refill: the
   * caller calls keepWarm() once its sandbox is up, so the refill's restore does not compete with the create
   * for CPU.
   */
  async take(snapshot: TemplateSnapshot): Promise<{ clone: RestoredClone; pooled: boolean }> {
    const clone = this.want(snapshot)?.ready.shift();
    if (clone) {
      this.takes.inc({ source: 'pool' });
      this.updateGauge();
      try {
        await clone.vm.setForeground();
      } catch (error) {
        await this.destroy(clone);
        throw error;
      }
      return { clone, pooled: true };
    }
    this.takes.inc({ source: 'restore' });
    return { clone: await this.restore(snapshot, { warm: false }), pooled: false };
  }

  /** Marks a template build as in use and fills its pool: after every create, and for every local template at start. */
  keepWarm(snapshot: TemplateSnapshot): void {
    const warm = this.want(snapshot);
    if (warm) this.fill(warm);
  }

  /** The pool entry of a build, made on first use; older builds of the template are drained. */
  private want(snapshot: TemplateSnapshot): WarmBuild | undefined {
    if (this.options.perTemplate === 0 || this.closed) return undefined;
    let warm = this.builds.get(snapshot.dir);
    if (!warm) {
      for (const [key, other] of this.builds) {
        if (other.snapshot.build.templateId === snapshot.build.templateId) this.drain(key, 'a newer build is in use');
      }
      if (this.builds.size >= this.options.maxTemplates) {
        const [oldest] = [...this.builds.entries()].sort(([, a], [, b]) => a.lastWantedAt - b.lastWantedAt);
        this.drain(oldest[0], `${this.options.maxTemplates} templates are kept warm at most`);
      }
      warm = { snapshot, ready: [], filling: false, lastWantedAt: Date.now() };
      this.builds.set(snapshot.dir, warm);
      this.sweepTimer ??= setInterval(() => this.sweepIdle(), SWEEP_INTERVAL_MS).unref();
    }
    warm.lastWantedAt = Date.now();
    return warm;
  }

  /** The clones waiting in the pool, per template build (host info, tests). */
  describe(): Array<{ templateId: string; buildId: string; clones: Array<{ cloneId: string; pid: number; dir: string }> }> {
    return [...this.builds.values()].map((w) => ({
      templateId: w.snapshot.build.templateId,
      buildId: w.snapshot.build.buildId,
      clones: w.ready.map((c) => ({ cloneId: c.cloneId, pid: c.vm.pid, dir: c.dir })),
    }));
  }

  /**
   * A new clone directory for a VM the pool does not make (a sandbox restored from a checkpoint): the same layout, so
   * the same reconcile claims or removes it.
   */
  async newCloneDirectory(): Promise<{ cloneId: string; dir: string; vmStateDir: string; serialLogPath: string }> {
    const cloneId = `c${randomBytes(8).toString('hex')}`;
    const dir = join(this.options.dir, cloneId);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    return { cloneId, dir, vmStateDir: join(dir, CLONE_VM_STATE_DIR), serialLogPath: join(dir, CLONE_SERIAL_LOG) };
  }

  /** At agent start, after live sandboxes were adopted: every clone directory they do not claim goes. */
  async reconcile(claimed: ReadonlySet<string>): Promise<number> {
    const removed = await removeUnclaimedClones(this.options.dir, claimed, this.vmm);
    if (removed.length > 0) this.logger.log(`removed ${removed.length} unclaimed clone(s) left by an earlier agent`);
    return removed.length;
  }

  /**
   * Restores a paused clone; on failure nothing of it is left. A clone for the pool is warmed first: resumed,
   * put through the guest agent's hot paths (so TCG has translated them; with KVM, so their pages are faulted
   * in), and paused again. It has no token and no sandbox yet; the create's /init reseeds its CRNG and steps its
   * clock, so nothing the warm-up drew or saw carries over.
   */
  private async restore(snapshot: TemplateSnapshot, options: { warm: boolean }): Promise<RestoredClone> {
    const cloneId = `c${randomBytes(8).toString('hex')}`;
    const dir = join(this.options.dir, cloneId);
    const vmStateDir = join(dir, CLONE_VM_STATE_DIR);
    const serialLogPath = join(dir, CLONE_SERIAL_LOG);
    let slot: NetworkSlot | undefined;
    let layer: RootfsLayer | undefined;
    let vm: VmHandle | undefined;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const [slotResult, layerResult] = await Promise.allSettled([this.slots.acquire(), this.layers.createLayer(cloneId, snapshot.disk, dir)]);
      if (slotResult.status === 'fulfilled') slot = slotResult.value;
      if (layerResult.status === 'fulfilled') layer = layerResult.value;
      if (slotResult.status === 'rejected') throw slotResult.reason;
      if (layerResult.status === 'rejected') throw layerResult.reason;
      vm = await this.snapshots.restore(
        snapshot,
        {
          id: cloneId,
          stateDir: vmStateDir,
          serialLogPath,
          rootDisk: { path: layer!.path, format: layer!.format },
          network: { netnsPath: slot!.netnsPath, tapName: slot!.tapName, guestMac: slot!.guestMac },
        },
        // Warming a clone for the pool is work ahead of demand: it runs at the lowest CPU priority until taken.
        { startPaused: true, background: options.warm },
      );
      if (options.warm) {
        await vm.resume();
        await warmGuestAgent(slot!.hostAddress, snapshot.build.agentPort ?? GUEST_AGENT_PORT, { commandRuns: 1, timeoutMs: WARM_UP_TIMEOUT_MS });
        await vm.pause();
      }
      return { cloneId, dir, vmStateDir, serialLogPath, snapshot, vm, slot: slot!, layer: layer! };
    } catch (error) {
      await this.destroy({ cloneId, dir, vm, slot });
      throw error;
    }
  }

  /** Brings a build's pool up to size, one restore at a time (each one competes with running guests for CPU). */
  private fill(warm: WarmBuild): void {
    if (warm.filling || this.closed || this.builds.get(warm.snapshot.dir) !== warm) return;
    if (warm.ready.length >= this.options.perTemplate || warm.retryTimer) return;
    warm.filling = true;
    void this.restore(warm.snapshot, { warm: this.options.warm })
      .then((clone) => {
        if (this.closed || this.builds.get(warm.snapshot.dir) !== warm) return this.destroy(clone);
        warm.ready.push(clone);
        this.updateGauge();
        void clone.vm.exited.then((exit) => this.onPooledExit(warm, clone, exit.reason));
      })
      .catch((error) => {
        this.logger.warn(`refilling the clone pool of ${warm.snapshot.build.templateId}/${warm.snapshot.build.buildId} failed: ${describeError(error)}`);
        this.refillLater(warm);
      })
      .finally(() => {
        warm.filling = false;
        this.fill(warm);
      });
  }

  /** A pooled VMM that dies (OOM kill, crash) is cleaned up and replaced; a taken one is its taker's business. */
  private async onPooledExit(warm: WarmBuild, clone: RestoredClone, reason: string): Promise<void> {
    const index = warm.ready.indexOf(clone);
    if (index === -1) return;
    warm.ready.splice(index, 1);
    this.updateGauge();
    this.logger.warn(`pooled clone ${clone.cloneId} of ${warm.snapshot.build.templateId} exited (${reason}); replacing it`);
    await this.destroy(clone);
    this.refillLater(warm);
  }

  /** The next refill after a failure or a dead clone waits, so a broken template or host is not hammered. */
  private refillLater(warm: WarmBuild): void {
    warm.retryTimer ??= setTimeout(() => {
      warm.retryTimer = undefined;
      this.fill(warm);
    }, REFILL_RETRY_MS).unref();
  }

  private drain(key: string, why: string): void {
    const warm = this.builds.get(key);
    if (!warm) return;
    this.builds.delete(key);
    clearTimeout(warm.retryTimer);
    const clones = warm.ready.splice(0);
    this.updateGauge();
    if (clones.length > 0) this.logger.log(`draining ${clones.length} clone(s) of ${warm.snapshot.build.templateId}/${warm.snapshot.build.buildId}: ${why}`);
    for (const clone of clones) void this.destroy(clone);
  }

  private sweepIdle(): void {
    const cutoff = Date.now() - this.options.idleMs;
    for (const [key, warm] of this.builds) if (warm.lastWantedAt < cutoff) this.drain(key, 'no sandbox was created from it lately');
  }

  /** Removes whatever exists of a clone; never throws. */
  private async destroy(parts: { cloneId: string; dir: string; vm?: VmHandle; slot?: NetworkSlot }): Promise<void> {
    if (parts.vm && !parts.vm.hasExited) await parts.vm.kill().catch((e) => this.logger.warn(`kill of clone ${parts.cloneId} failed: ${describeError(e)}`));
    if (parts.slot && !this.closed) await this.slots.release(parts.slot).catch((e) => this.logger.warn(`slot release for clone ${parts.cloneId} failed: ${describeError(e)}`));
    // The layer, VM state and serial log all live in the clone's directory.
    await rm(parts.dir, { recursive: true, force: true }).catch((e) => this.logger.warn(`removing ${parts.dir} failed: ${describeError(e)}`));
  }

  private updateGauge(): void {
    let ready = 0;
    for (const warm of this.builds.values()) ready += warm.ready.length;
    this.readyGauge.set(ready);
  }

  /** Stops refilling before the network pool shuts down. */
  onModuleDestroy(): void {
    this.closed = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
  }

  /**
   * Pooled clones are not sandboxes: they do not outlive the agent. Their slots are left to the next start's
   * reconcile (the network pool is shutting down too).
   */
  async onApplicationShutdown(): Promise<void> {
    this.closed = true;
    const clones: RestoredClone[] = [];
    for (const warm of this.builds.values()) {
      clones.push(...warm.ready.splice(0));
      clearTimeout(warm.retryTimer);
    }
    this.builds.clear();
    await Promise.all(clones.map((clone) => this.destroy(clone)));
  }
}
