import type { HostView, NatsConnectionHolder } from '@kiln/messaging';
import { FleetViewService } from './fleet-view.service';

type Entry = { key: string; operation: 'PUT' | 'DEL' | 'PURGE'; json<T>(): T };

/**
 * A KV watch as the nats client delivers one: entries in order, and the "initial values done" callback either queued
 * in order with them or run at once inside watch() (when every initial entry was queued before it returned).
 */
class FakeWatch {
  private readonly queue: Array<Entry | (() => void)> = [];
  private wake?: () => void;
  private ended = false;
  received = 0;

  push(item: Entry | (() => void)): void {
    if (typeof item !== 'function') this.received++;
    this.queue.push(item);
    this.wake?.();
  }

  getReceived(): number {
    return this.received;
  }

  stop(): void {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Entry> {
    for (;;) {
      const item = this.queue.shift();
      if (item === undefined) {
        if (this.ended) return;
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      if (typeof item === 'function') item();
      else yield item;
    }
  }
}

function host(hostId: string, templates: string[] = [], readyCloneTemplates: string[] = []): HostView {
  return { hostId, templates, readyCloneTemplates, state: 'ready' } as HostView;
}

const put = (view: HostView): Entry => ({ key: view.hostId, operation: 'PUT', json: <T>() => JSON.parse(JSON.stringify(view)) as T });
const del = (key: string): Entry => ({ key, operation: 'DEL', json: () => { throw new Error('a delete has no value'); } });
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** A FleetViewService whose bucket is `start(initializedFn)`'s watch (a new one per watch()). */
function viewWatching(start: (initializedFn: () => void) => FakeWatch): FleetViewService {
  const kv = { watch: async (options: { initializedFn: () => void }) => start(options.initializedFn) };
  const nats = { nc: { jetstream: () => ({ views: { kv: async () => kv } }) } } as unknown as NatsConnectionHolder;
  return new FleetViewService(nats);
}

describe('FleetViewService', () => {
  let view: FleetViewService | undefined;
  afterEach(async () => {
    await view?.onApplicationShutdown();
  });

  it('is synced only once the initial entries are applied, even when the client signals the end of them early', async () => {
    const watch = new FakeWatch();
    view = viewWatching((initializedFn) => {
      watch.push(put(host('a', ['base'])));
      watch.push(put(host('b')));
      // Every initial entry is queued already: the client calls this inside watch(), before anything was iterated.
      initializedFn();
      return watch;
    });
    await view.onModuleInit();
    expect(view.hosts.map((h) => h.hostId)).toEqual(['a', 'b']);
    expect(view.withTemplate('base').map((h) => h.hostId)).toEqual(['a']);
  });

  it('follows puts and deletes, keeping the template index (cached and clone-ready) up to date', async () => {
    const watch = new FakeWatch();
    view = viewWatching((initializedFn) => {
      watch.push(put(host('a', ['base', 'py'])));
      watch.push(initializedFn);
      return watch;
    });
    await view.onModuleInit();
    expect(view.withTemplate('py').map((h) => h.hostId)).toEqual(['a']);

    watch.push(put(host('b', [], ['py'])));
    watch.push(put(host('a', ['base'])));
    await settle();
    expect(view.withTemplate('py').map((h) => h.hostId)).toEqual(['b']);
    expect(view.withTemplate('base').map((h) => h.hostId)).toEqual(['a']);
    expect(view.withTemplate('unknown')).toEqual([]);

    watch.push(del('a'));
    await settle();
    expect(view.get('a')).toBeUndefined();
    expect(view.withTemplate('base')).toEqual([]);
    expect(view.hosts.map((h) => h.hostId)).toEqual(['b']);

    // A value that is not a HostView of its key is ignored.
    watch.push({ ...put(host('x')), key: 'c' });
    await settle();
    expect(view.get('c')).toBeUndefined();
  });

  it('watches again when the watch ends, dropping hosts removed while it was not watching', async () => {
    const watches: FakeWatch[] = [];
    view = viewWatching((initializedFn) => {
      const watch = new FakeWatch();
      // The second watch's bucket no longer holds host a.
      if (watches.length === 0) watch.push(put(host('a', ['base'])));
      watch.push(put(host('b', ['base'])));
      watch.push(initializedFn);
      watches.push(watch);
      return watch;
    });
    await view.onModuleInit();
    expect(view.hosts.map((h) => h.hostId)).toEqual(['a', 'b']);
    watches[0].stop();
    // The view waits a second before watching again.
    await new Promise((resolve) => setTimeout(resolve, 1_300));
    expect(watches).toHaveLength(2);
    expect(view.hosts.map((h) => h.hostId)).toEqual(['b']);
    expect(view.withTemplate('base').map((h) => h.hostId)).toEqual(['b']);
  });
});
