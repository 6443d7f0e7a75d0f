/**
 * A single-consumer queue between a producer that must not block (process output, fs events) and a consumer that
 * writes to a network stream at its own pace. It counts queued bytes so the producer can pause its source when a
 * consumer falls behind (backpressure) instead of buffering without bound.
 */
export type QueuePull<T> = { kind: 'item'; item: T } | { kind: 'idle' } | { kind: 'closed' };

export class EventQueue<T> {
  private readonly items: Array<{ item: T; bytes: number }> = [];
  private queuedBytes = 0;
  private closed = false;
  private waiter: (() => void) | undefined;

  constructor(
    private readonly lowWaterBytes = 0,
    private readonly onDrained?: () => void,
  ) {}

  get pendingBytes(): number {
    return this.queuedBytes;
  }

  get length(): number {
    return this.items.length;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  push(item: T, bytes = 0): void {
    if (this.closed) return;
    this.items.push({ item, bytes });
    this.queuedBytes += bytes;
    this.wake();
  }

  /** No more items will come; the consumer still receives what is queued. */
  close(): void {
    this.closed = true;
    this.wake();
  }

  /** Drops queued items (consumer went away) so their memory and backpressure are released at once. */
  discard(): void {
    this.items.length = 0;
    this.queuedBytes = 0;
    this.closed = true;
    this.wake();
    this.onDrained?.();
  }

  /** Next item; 'idle' after idleMs without one (for keepalives) or when the signal aborts. */
  async pull(idleMs: number, signal?: AbortSignal): Promise<QueuePull<T>> {
    for (;;) {
      const next = this.items.shift();
      if (next) {
        const wasAboveLow = this.queuedBytes > this.lowWaterBytes;
        this.queuedBytes -= next.bytes;
        if (wasAboveLow && this.queuedBytes <= this.lowWaterBytes) this.onDrained?.();
        return { kind: 'item', item: next.item };
      }
      if (this.closed) return { kind: 'closed' };
      if (signal?.aborted) return { kind: 'idle' };
      const woke = await this.waitForItem(idleMs, signal);
      if (!woke) return { kind: 'idle' };
    }
  }

  private waitForItem(idleMs: number, signal?: AbortSignal): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const finish = (woke: boolean) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.waiter = undefined;
        resolve(woke);
      };
      const onAbort = () => finish(false);
      const timer = setTimeout(() => finish(false), idleMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiter = () => finish(true);
    });
  }

  private wake(): void {
    this.waiter?.();
  }
}
