import { Inject, Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import { parseIpv4, type EgressPolicy } from '@kiln/contracts';
import { checkEgressPolicy, CLOSED_EGRESS_POLICY, OPEN_EGRESS_POLICY, type AppliedEgressPolicy } from './egress-policy';
import { NETWORK_OPTIONS, type ResolvedNetworkOptions } from './network.options';
import {
  EgressProxyNotConfiguredError,
  SlotConflictError,
  SlotNotFoundError,
  SlotNotLeasedError,
  SlotPoolNotReadyError,
  SlotsExhaustedError,
} from './network.errors';
import type { NetworkSlot } from './network-slot';
import type { PlatformFloor } from './platform-floor';
import { slotAddresses } from './slot-addressing';
import { SlotProvisioner } from './slot-provisioner';

/** A slot a live sandbox holds across an agent restart, with the egress policy to re-apply to it. */
export interface SlotClaim {
  index: number;
  egress?: EgressPolicy;
}

export interface SlotReconcileReport {
  /** In-use indexes whose slot was found intact and is now leased to its sandbox again. */
  adopted: number[];
  /** In-use indexes that could not be adopted (namespace gone or broken); their sandboxes have no network. */
  lost: { index: number; reason: string }[];
  /** Leftover slots nobody claimed, removed. */
  destroyed: number[];
}

export interface SlotPoolStats {
  leased: number;
  free: number;
  preparing: number;
  maxSlots: number;
}

type PoolState = 'uninitialized' | 'initializing' | 'ready' | 'destroying' | 'shut down';

/** Delay before the background refill retries after a failed slot creation, so a broken host is not hammered. */
const REFILL_RETRY_MS = 2_000;

/**
 * Hands out network slots to sandboxes. Keeps `prefill` free slots built ahead of demand so acquire() is normally a
 * pop from a list; released slots are reset and reused. Every index the pool knows is in exactly one of: free,
 * leased, or preparing (being created, reset or destroyed), and together they never exceed `maxSlots`.
 */
@Injectable()
export class NetworkSlotPool implements OnApplicationShutdown {
  private readonly logger = new Logger(NetworkSlotPool.name);
  private state: PoolState = 'uninitialized';
  private readonly free: NetworkSlot[] = [];
  private readonly leased = new Map<number, NetworkSlot>();
  /** The egress policy in force on each leased slot (absent: none, everything above the floor is allowed). */
  private readonly policies = new Map<number, AppliedEgressPolicy>();
  /** A number per lease, so work begun for one lease of a slot never records its outcome on a later lease. */
  private readonly leaseIds = new Map<number, number>();
  private lastLeaseId = 0;
  /** Indexes whose slot is being created, reset or destroyed, with the work's completion. */
  private readonly preparing = new Map<number, Promise<unknown>>();
  private refilling = false;
  private destroying: Promise<void> | undefined;
  private refillTimer: NodeJS.Timeout | undefined;
  /** Resolved whenever a slot becomes free or a preparation ends, waking acquire() calls waiting for capacity. */
  private changeWaiters: (() => void)[] = [];

  constructor(
    @Inject(NETWORK_OPTIONS) private readonly options: ResolvedNetworkOptions,
    private readonly provisioner: SlotProvisioner,
  ) {}

  /**
   * Call once at agent start. `inUse` are the slots recorded in the state of sandboxes that are still alive (an
   * index, or an index with the sandbox's egress policy): those slots are adopted with their VMs running and their
   * rules re-applied with that policy; every other slot with our name prefix is removed. Then the free pool starts
   * filling in the background.
   */
  async init(inUse: readonly (number | SlotClaim)[] = []): Promise<SlotReconcileReport> {
    if (this.state !== 'uninitialized') throw new SlotPoolNotReadyError(this.state);
    this.state = 'initializing';
    try {
      const report: SlotReconcileReport = { adopted: [], lost: [], destroyed: [] };
      const claims = new Map<number, AppliedEgressPolicy>();
      for (const claim of inUse) {
        const { index, egress } = typeof claim === 'number' ? { index: claim, egress: undefined } : claim;
        try {
          claims.set(index, egress ? this.checkPolicy(egress) : OPEN_EGRESS_POLICY);
        } catch (err) {
          report.lost.push({ index, reason: `its egress policy cannot be applied: ${err instanceof Error ? err.message : String(err)}` });
        }
      }
      await this.provisioner.assertPoolUnused();
      await this.provisioner.ensureHost(
        [...claims].flatMap(([index, policy]) =>
          policy.allowDomains.length > 0 && index < this.options.pool.capacity ? [slotAddresses(this.options.pool, index).hostAddress] : [],
        ),
      );
      const existing = await this.provisioner.listExisting();
      for (const [index, policy] of claims) {
        try {
          this.lease(index, await this.checkAdoptable(index, policy));
          this.policies.set(index, policy);
          report.adopted.push(index);
        } catch (err) {
          report.lost.push({ index, reason: err instanceof Error ? err.message : String(err) });
        }
      }
      report.lost.sort((a, b) => a.index - b.index);
      const leftovers = [...new Set([...existing.namespaces, ...existing.hostVeths])].filter((i) => !this.leased.has(i));
      await this.provisioner.destroy(leftovers);
      report.destroyed = leftovers.sort((a, b) => a - b);
      this.state = 'ready';
      this.logger.log(
        `slot pool ready: adopted ${report.adopted.length}, lost ${report.lost.length}, removed ${report.destroyed.length}`,
      );
      this.scheduleRefill();
      return report;
    } catch (err) {
      this.leased.clear();
      this.policies.clear();
      this.leaseIds.clear();
      this.state = 'uninitialized';
      throw err;
    }
  }

  /** A slot for a new sandbox. Throws SlotsExhaustedError when `maxSlots` are leased. */
  async acquire(): Promise<NetworkSlot> {
    for (;;) {
      this.assertReady();
      const slot = this.free.pop();
      if (slot) {
        this.lease(slot.index, slot);
        this.scheduleRefill();
        return slot;
      }
      const index = this.nextFreeIndex();
      if (index !== undefined) {
        const created = await this.prepare(
          index,
          () => this.provisioner.create(index),
          (slot) => this.state === 'ready' && this.lease(index, slot),
        );
        // destroyAll waits for in-flight creations and then removes whatever exists, this slot included.
        this.assertReady();
        this.scheduleRefill();
        return created;
      }
      if (this.preparing.size === 0) throw new SlotsExhaustedError(this.options.maxSlots);
      // Every index is taken but some are still being built or reset: one of them may become free.
      await this.nextChange();
    }
  }

  /**
   * Takes a slot back once its sandbox's VMM has exited. The slot is reset in the background before it becomes
   * available again (or destroyed when enough free slots are kept); the returned promise settles when that is done.
   */
  async release(slot: Pick<NetworkSlot, 'index'>): Promise<void> {
    const leased = this.leased.get(slot.index);
    if (!leased) throw new SlotNotLeasedError(slot.index);
    this.leased.delete(slot.index);
    this.policies.delete(slot.index);
    this.leaseIds.delete(slot.index);
    // While destroyAll runs it removes every slot that exists; resetting this one would only race with it.
    if (this.state !== 'ready') return;
    const keep = this.free.length + this.preparing.size < this.options.prefill + this.options.maxIdle;
    try {
      if (keep) {
        await this.prepare(
          slot.index,
          () => this.provisioner.reset(leased),
          () => this.state === 'ready' && this.free.push(leased),
        );
      } else {
        await this.prepare(slot.index, () => this.provisioner.destroy([slot.index]));
      }
    } catch (err) {
      this.logger.error(`slot ${slot.index}: reset failed, destroying it: ${String(err)}`);
      await this.prepare(slot.index, () => this.provisioner.destroy([slot.index])).catch((destroyErr: unknown) =>
        this.logger.error(`slot ${slot.index}: destroy failed: ${String(destroyErr)}`),
      );
    }
  }

  /**
   * Replaces the egress rules of a leased slot (create-time policy or a live update) and returns them as applied.
   * New connections follow the new rules at once; connections already established keep going until they close.
   * Release clears the policy. Throws InvalidEgressPolicyError for a policy that is not a normalised EgressPolicy,
   * EgressProxyNotConfiguredError for domain rules without an egress proxy.
   */
  async setEgressPolicy(slot: Pick<NetworkSlot, 'index'>, policy: Partial<EgressPolicy>): Promise<AppliedEgressPolicy> {
    const applied = this.checkPolicy(policy);
    const leased = this.leased.get(slot.index);
    if (!leased) throw new SlotNotLeasedError(slot.index);
    const leaseId = this.leaseIds.get(slot.index);
    // Re-applying the rules in force changes nothing, and costs no nft transaction.
    if (samePolicy(this.policyInForce(slot.index), applied)) {
      this.policies.set(slot.index, applied);
      return applied;
    }
    await this.provisioner.applyEgressPolicy(leased, applied);
    // Recorded after the rules: the egress proxy reads it per connection, and a redirected connection that arrives
    // in between is judged by the previous policy, which is what was in force when it was made.
    if (this.leaseIds.get(slot.index) !== leaseId) throw new SlotNotLeasedError(slot.index);
    this.policies.set(slot.index, applied);
    return applied;
  }

  /** Validates a policy for this pool without applying it (callers check before they commit resources). */
  checkPolicy(policy: Partial<EgressPolicy>): AppliedEgressPolicy {
    const applied = checkEgressPolicy(policy);
    if (applied.allowDomains.length > 0 && this.options.egressProxyPort === 0) throw new EgressProxyNotConfiguredError();
    return applied;
  }

  /** The policy in force on a leased slot; undefined when the slot is not leased. */
  egressPolicyOf(index: number): AppliedEgressPolicy | undefined {
    return this.leased.has(index) ? this.policyInForce(index) : undefined;
  }

  /**
   * The leased slot whose traffic leaves the slot namespace from `address` (its hostAddress, after the slot's
   * SNAT), with its policy: how the egress proxy tells which sandbox a redirected connection belongs to.
   */
  leasedSlotByAddress(address: string): { slot: NetworkSlot; hostSideIp: string; policy: AppliedEgressPolicy } | undefined {
    const value = parseIpv4(address);
    const offset = value === undefined ? -1 : value - this.options.pool.network;
    if (offset < 0 || offset % 2 !== 1) return undefined;
    const index = (offset - 1) / 2;
    const slot = this.leased.get(index);
    if (!slot || slot.hostAddress !== address) return undefined;
    return { slot, hostSideIp: slotAddresses(this.options.pool, index).hostSideIp, policy: this.policyInForce(index) };
  }

  /** A leased slot's rules: closed as made or reset, until a sandbox's own policy is applied. */
  private policyInForce(index: number): AppliedEgressPolicy {
    return this.policies.get(index) ?? CLOSED_EGRESS_POLICY;
  }

  /** The platform floor every slot enforces (available once init has set up the host). */
  platformFloor(): PlatformFloor {
    return this.provisioner.platformFloor();
  }

  /**
   * Marks an existing slot as held by a sandbox discovered after init (init already adopts the indexes passed to
   * it). The slot's namespace, veth and tap must be intact; its rules are re-applied with `egress`.
   */
  async adopt(index: number, egress?: EgressPolicy): Promise<NetworkSlot> {
    this.assertReady();
    const leased = this.leased.get(index);
    if (leased) return leased;
    if (this.free.some((s) => s.index === index) || this.preparing.has(index)) throw new SlotConflictError(index);
    const policy = egress ? this.checkPolicy(egress) : OPEN_EGRESS_POLICY;
    // The host redirects the slot's web traffic before the slot's rules start accepting it for the proxy.
    if (policy.allowDomains.length > 0) await this.provisioner.setProxied(this.provisioner.describe(index), true);
    const slot = await this.checkAdoptable(index, policy);
    this.assertReady();
    if (this.leased.has(index) || this.preparing.has(index)) throw new SlotConflictError(index);
    this.lease(index, slot);
    this.policies.set(index, policy);
    return slot;
  }

  /**
   * Removes every namespace, veth, tap and rule the pool made, leased slots included (shutdown of the whole node,
   * tests). The pool can be initialised again afterwards.
   */
  async destroyAll(): Promise<void> {
    if (this.state === 'initializing') throw new SlotPoolNotReadyError(this.state);
    this.destroying ??= this.removeEverything().finally(() => {
      this.destroying = undefined;
    });
    return this.destroying;
  }

  private async removeEverything(): Promise<void> {
    this.state = 'destroying';
    this.stopRefill();
    try {
      await Promise.allSettled([...this.preparing.values()]);
      const existing = await this.provisioner.listExisting();
      const all = new Set([...existing.namespaces, ...existing.hostVeths, ...this.leased.keys(), ...this.free.map((s) => s.index)]);
      await this.provisioner.destroy([...all]);
      await this.provisioner.removeHost();
    } finally {
      // Even after a failed removal the pool forgets its slots: a retry of destroyAll or init starts from what
      // actually exists on the host.
      this.free.length = 0;
      this.leased.clear();
      this.policies.clear();
      this.leaseIds.clear();
      this.state = 'uninitialized';
      this.notifyChange();
    }
  }

  leasedSlot(index: number): NetworkSlot | undefined {
    return this.leased.get(index);
  }

  stats(): SlotPoolStats {
    return { leased: this.leased.size, free: this.free.length, preparing: this.preparing.size, maxSlots: this.options.maxSlots };
  }

  /** Resolves once the background refill has nothing left to do (for tests and orderly startup). */
  async whenFilled(): Promise<void> {
    while (this.state === 'ready' && (this.refilling || this.needsRefill() || this.preparing.size > 0)) {
      await this.nextChange();
    }
  }

  /**
   * Agent shutdown leaves slots in place for the next agent to adopt; it only stops handing out slots and waits for
   * background work. Slots finished after this point stay unfiled and the next agent's init removes them.
   */
  async onApplicationShutdown(): Promise<void> {
    if (this.state === 'ready') this.state = 'shut down';
    this.stopRefill();
    await Promise.allSettled([...this.preparing.values()]);
    this.notifyChange();
  }

  private async checkAdoptable(index: number, policy: AppliedEgressPolicy) {
    const slot = this.provisioner.describe(index);
    const { problems } = await this.provisioner.inspect(index).catch((err: unknown) => ({ problems: [String(err)] }));
    if (problems.length > 0) throw new SlotNotFoundError(index, problems.join('; '));
    await this.provisioner.applySlotRules(index, policy);
    return slot;
  }

  private lease(index: number, slot: NetworkSlot): void {
    this.leased.set(index, slot);
    this.leaseIds.set(index, ++this.lastLeaseId);
  }

  private assertReady(): void {
    if (this.state !== 'ready') throw new SlotPoolNotReadyError(this.state);
  }

  private usedCount(): number {
    return this.free.length + this.leased.size + this.preparing.size;
  }

  private nextFreeIndex(): number | undefined {
    if (this.usedCount() >= this.options.maxSlots) return undefined;
    const used = new Set([...this.leased.keys(), ...this.preparing.keys(), ...this.free.map((s) => s.index)]);
    for (let i = 0; i < this.options.maxSlots; i++) if (!used.has(i)) return i;
    return undefined;
  }

  /**
   * Runs work on an index while it counts as preparing, so no one else hands it out or counts it as free. `place`
   * files the result (free or leased) in the same synchronous step that ends the reservation: a waiter woken in
   * between would otherwise see the index as unused and build it a second time.
   * When the pool is no longer ready `place` files nothing; destroyAll removes whatever exists once work is done.
   */
  private async prepare<T>(index: number, work: () => Promise<T>, place?: (result: T) => unknown): Promise<T> {
    const promise = work();
    this.preparing.set(index, promise);
    try {
      const result = await promise;
      place?.(result);
      return result;
    } finally {
      this.preparing.delete(index);
      this.notifyChange();
    }
  }

  private needsRefill(): boolean {
    const building = [...this.preparing.keys()].filter((i) => !this.leased.has(i)).length;
    return this.free.length + building < this.options.prefill && this.usedCount() < this.options.maxSlots;
  }

  /** Creates free slots one at a time until `prefill` are ready; serial so a burst never starves the host's CPUs. */
  private scheduleRefill(): void {
    if (this.refilling || this.refillTimer || this.state !== 'ready') return;
    this.refilling = true;
    void (async () => {
      try {
        while (this.state === 'ready' && this.free.length < this.options.prefill) {
          const index = this.nextFreeIndex();
          if (index === undefined) return;
          await this.prepare(
            index,
            () => this.provisioner.create(index),
            (slot) => this.state === 'ready' && this.free.push(slot),
          );
        }
      } catch (err) {
        this.logger.error(`background slot creation failed, retrying in ${REFILL_RETRY_MS} ms: ${String(err)}`);
        this.refillTimer = setTimeout(() => {
          this.refillTimer = undefined;
          this.scheduleRefill();
        }, REFILL_RETRY_MS);
        this.refillTimer.unref();
      } finally {
        this.refilling = false;
        this.notifyChange();
      }
    })();
  }

  private stopRefill(): void {
    if (this.refillTimer) clearTimeout(this.refillTimer);
    this.refillTimer = undefined;
  }

  private nextChange(): Promise<void> {
    return new Promise((resolve) => this.changeWaiters.push(resolve));
  }

  private notifyChange(): void {
    const waiters = this.changeWaiters;
    this.changeWaiters = [];
    for (const wake of waiters) wake();
  }
}

function samePolicy(a: AppliedEgressPolicy, b: AppliedEgressPolicy): boolean {
  const key = (p: AppliedEgressPolicy) => JSON.stringify([p.allowCidrs, p.allowDomains, p.denyCidrs]);
  return key(a) === key(b);
}
