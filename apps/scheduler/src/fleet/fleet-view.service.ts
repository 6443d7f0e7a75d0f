import { Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { describeError } from '@kiln/config';
import { HOSTS_KV_BUCKET, HostView, NatsConnectionHolder } from '@kiln/messaging';
import type { KV, KvEntry, QueuedIterator } from 'nats';
import type { PlacementFleet } from '../placement/placement-policy';

/** How long a watcher that ended (NATS closed it, the bucket was recreated) waits before watching again. */
const REWATCH_DELAY_MS = 1_000;
/** How long start-up waits for the view to hold every host before serving anyway. */
const INITIAL_SYNC_WAIT_MS = 10_000;
/** initializedFn ran inside kv.watch(), before the watcher was returned: count its entries once it is. */
const EARLY = -1;

/**
 * This replica's copy of the fleet: every host's HostView as the host monitor last wrote it to the KV bucket
 * KILN_HOSTS, followed through a KV watch (the last value of each key first, then every change). Placement and
 * reconcile read hosts from here, never from a heartbeat of their own.
 */
@Injectable()
export class FleetViewService implements OnModuleInit, OnApplicationShutdown, PlacementFleet {
  private readonly logger = new Logger(FleetViewService.name);
  private readonly byId = new Map<string, HostView>();
  private watcher?: QueuedIterator<KvEntry>;
  private stopped = false;
  private synced = false;
  private readonly syncWaiters: Array<() => void> = [];
  /** Rebuilt on the first read after a change. */
  private list?: HostView[];
  /**
   * Hosts by template they hold, kept up to date entry by entry (every heartbeat flush rewrites every host, so a
   * rebuild of the whole index per change would cost each placement a walk over the fleet); each template's list
   * for placement is rebuilt on its first read after one of its hosts changed.
   */
  private readonly byTemplate = new Map<string, Map<string, HostView>>();
  private readonly templateLists = new Map<string, HostView[]>();

  constructor(private readonly nats: NatsConnectionHolder) {}

  async onModuleInit(): Promise<void> {
    // The monitor creates the bucket too; whichever comes first, the other finds it (history 1: only the last value matters).
    const kv = await this.nats.nc.jetstream().views.kv(HOSTS_KV_BUCKET, { history: 1 });
    await this.watch(kv);
    // Placing before the view holds the fleet would refuse creates for want of hosts; a bucket that is slow to
    // deliver only delays start-up, and the view fills in as entries arrive.
    const timer = new Promise<void>((resolve) => setTimeout(resolve, INITIAL_SYNC_WAIT_MS).unref());
    await Promise.race([this.whenSynced(), timer]);
  }

  async onApplicationShutdown(): Promise<void> {
    this.stopped = true;
    this.watcher?.stop();
  }

  /** Resolves once the view holds every host the bucket held when watching began. */
  whenSynced(): Promise<void> {
    if (this.synced) return Promise.resolve();
    return new Promise((resolve) => this.syncWaiters.push(resolve));
  }

  get(hostId: string): HostView | undefined {
    return this.byId.get(hostId);
  }

  /** Every host, in any state. */
  get hosts(): readonly HostView[] {
    this.list ??= [...this.byId.values()];
    return this.list;
  }

  /** Hosts with the template's current build cached or a clone of it ready. */
  withTemplate(templateId: string): readonly HostView[] {
    let list = this.templateLists.get(templateId);
    if (!list) {
      list = [...(this.byTemplate.get(templateId)?.values() ?? [])];
      this.templateLists.set(templateId, list);
    }
    return list;
  }

  private async watch(kv: KV): Promise<void> {
    // A watch delivers the current value of every key first, then changes. The client signals the end of that first
    // part either in order with the entries or, when they were all queued already, at once: the count of entries
    // received at that moment is what must be applied before the view is complete. A key missing from the first part
    // (a host removed while no watch was open) is dropped then.
    const initialKeys = new Set<string>();
    let initialCount: number | undefined;
    let initialized = false;
    let applied = 0;
    // Filled once watch() returns; the callback may run before that.
    const started: { watcher?: QueuedIterator<KvEntry> } = {};
    const settle = (): void => {
      if (initialized || initialCount === undefined || applied < initialCount) return;
      initialized = true;
      for (const hostId of [...this.byId.keys()]) if (!initialKeys.has(hostId)) this.forget(hostId);
      this.markSynced();
    };
    const watcher = await kv.watch({
      initializedFn: () => {
        initialCount = started.watcher ? started.watcher.getReceived() : EARLY;
        settle();
      },
    });
    started.watcher = watcher;
    if (initialCount === EARLY) initialCount = watcher.getReceived();
    this.watcher = watcher;
    settle();
    const entries = watcher;
    void (async () => {
      try {
        for await (const entry of entries) {
          if (!initialized) initialKeys.add(entry.key);
          this.apply(entry);
          applied++;
          settle();
        }
      } catch (error) {
        this.logger.warn(`watch of ${HOSTS_KV_BUCKET} failed: ${describeError(error)}`);
      }
      if (this.stopped) return;
      // The KV watcher survives reconnects on its own; it only ends when the server drops its consumer. Until the
      // new watch delivers, placement keeps using the last values it saw.
      this.logger.warn(`watch of ${HOSTS_KV_BUCKET} ended; watching again`);
      await sleep(REWATCH_DELAY_MS);
      while (!this.stopped) {
        try {
          await this.watch(kv);
          return;
        } catch (error) {
          this.logger.warn(`watch of ${HOSTS_KV_BUCKET} could not restart: ${describeError(error)}`);
          await sleep(REWATCH_DELAY_MS);
        }
      }
    })();
  }

  private apply(entry: KvEntry): void {
    if (entry.operation === 'DEL' || entry.operation === 'PURGE') {
      this.forget(entry.key);
      return;
    }
    let view: HostView;
    try {
      view = entry.json<HostView>();
    } catch (error) {
      this.logger.warn(`host ${entry.key}: KV value is not a HostView (${describeError(error)}); ignored`);
      return;
    }
    if (typeof view?.hostId !== 'string' || view.hostId !== entry.key) {
      this.logger.warn(`KV entry ${entry.key} names host ${String(view?.hostId)}; ignored`);
      return;
    }
    this.reindex(entry.key, this.byId.get(entry.key), view);
    this.byId.set(entry.key, view);
    this.list = undefined;
  }

  private reindex(hostId: string, previous: HostView | undefined, next: HostView | undefined): void {
    const after = next ? templatesHeldBy(next) : new Set<string>();
    for (const templateId of previous ? templatesHeldBy(previous) : []) {
      if (after.has(templateId)) continue;
      const holders = this.byTemplate.get(templateId);
      holders?.delete(hostId);
      if (holders?.size === 0) this.byTemplate.delete(templateId);
      this.templateLists.delete(templateId);
    }
    for (const templateId of after) {
      let holders = this.byTemplate.get(templateId);
      if (!holders) this.byTemplate.set(templateId, (holders = new Map()));
      holders.set(hostId, next!);
      this.templateLists.delete(templateId);
    }
  }

  private forget(hostId: string): void {
    const previous = this.byId.get(hostId);
    if (!previous) return;
    this.reindex(hostId, previous, undefined);
    this.byId.delete(hostId);
    this.list = undefined;
  }

  private markSynced(): void {
    this.synced = true;
    for (const resolve of this.syncWaiters.splice(0)) resolve();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function templatesHeldBy(host: HostView): Set<string> {
  return new Set([...(host.templates ?? []), ...(host.readyCloneTemplates ?? [])]);
}
