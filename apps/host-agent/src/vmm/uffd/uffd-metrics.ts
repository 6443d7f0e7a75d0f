import { Injectable } from '@nestjs/common';
import { Counter, Gauge, type Metric } from 'prom-client';
import { MetricsRegistry } from '@kiln/telemetry';
import type { UffdWorkerStats } from './uffd-worker.stats';
import { UffdWorkerSupervisor } from './uffd-worker.supervisor';

/** The worker's bucket bounds (µs) as documented in docs/uffd-worker.md; the exported histogram uses these, in seconds. */
export const UFFD_LATENCY_BOUNDS_US: readonly number[] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/** How long one round of worker stats serves the scrape's several metrics (they are collected one by one). */
const SNAPSHOT_REUSE_MS = 1_000;
/** A scrape must not hang on a stuck worker; it falls back to that worker's last stats. */
const SCRAPE_STATS_TIMEOUT_MS = 1_000;

interface UffdTotals {
  faults: number;
  bytesCopied: number;
  zeroPages: number;
  prefetchedPages: number;
  /** Per bucket over UFFD_LATENCY_BOUNDS_US, last = above the largest bound (not cumulative). */
  latencyCounts: number[];
  latencySumUs: number;
}

interface UffdSnapshot {
  readonly totals: UffdTotals;
  readonly liveWorkers: number;
}

/**
 * The host's UFFD workers in Prometheus: totals of every worker this agent started or adopted, read from the live
 * ones at scrape time plus what exited ones last reported (folded in when they exit, so the counters never go back).
 * An adopted worker's counters run from its own start, before this agent's: they count here in full.
 *
 * The latency histogram is built from the workers' per-bucket counts. prom-client's Histogram can only observe
 * single values, so it is a small registered metric of its own that emits the `_bucket`/`_sum`/`_count` series
 * the registry formats like any histogram.
 */
@Injectable()
export class UffdMetrics {
  /** Counters of workers that have exited, from their last stats. */
  private readonly exitedTotals: UffdTotals = emptyTotals();
  private snapshotAt = 0;
  private snapshotInFlight: Promise<UffdSnapshot> | undefined;

  constructor(
    private readonly metrics: MetricsRegistry,
    private readonly supervisor: UffdWorkerSupervisor,
  ) {
    supervisor.onWorkerExit((worker) => {
      if (worker.lastStats) addStats(this.exitedTotals, worker.lastStats);
    });
    const registry = metrics.registry;
    const counterOf = (name: string, help: string, pick: (totals: UffdTotals) => number): Counter =>
      new Counter({
        name,
        help,
        registers: [registry],
        collect: async function (this: Counter) {
          const { totals } = await snapshot();
          this.reset();
          this.inc(pick(totals));
        },
      });
    const snapshot = (): Promise<UffdSnapshot> => this.snapshot();
    counterOf('kiln_uffd_page_faults_total', 'Guest page faults served by UFFD workers (UFFD_EVENT_PAGEFAULT)', (t) => t.faults);
    counterOf('kiln_uffd_bytes_copied_total', 'Bytes UFFD workers copied into guest memory (UFFDIO_COPY)', (t) => t.bytesCopied);
    counterOf('kiln_uffd_zero_pages_total', 'Guest pages UFFD workers mapped as zero (UFFDIO_ZEROPAGE)', (t) => t.zeroPages);
    counterOf('kiln_uffd_prefetched_pages_total', 'Guest pages UFFD workers copied ahead of faults', (t) => t.prefetchedPages);
    new Gauge({
      name: 'kiln_uffd_workers',
      help: 'UFFD workers running (one per VM restored with a Uffd memory backend)',
      registers: [registry],
      collect: async function (this: Gauge) {
        this.set((await snapshot()).liveWorkers);
      },
    });
    registry.registerMetric(latencyHistogram('kiln_uffd_fault_latency_seconds', snapshot));
  }

  /** One round of stats from every live worker, shared by the metrics of one scrape. */
  private snapshot(): Promise<UffdSnapshot> {
    if (this.snapshotInFlight && Date.now() - this.snapshotAt < SNAPSHOT_REUSE_MS) return this.snapshotInFlight;
    this.snapshotAt = Date.now();
    this.snapshotInFlight = this.readSnapshot();
    return this.snapshotInFlight;
  }

  private async readSnapshot(): Promise<UffdSnapshot> {
    const workers = this.supervisor.workers();
    await Promise.all(workers.map((worker) => worker.stats(SCRAPE_STATS_TIMEOUT_MS).catch(() => undefined)));
    // Summed in one synchronous step: a worker that exited during the reads is in exitedTotals (with stats at
    // least as new as the read) and no longer in workers(), so it is counted exactly once.
    const totals = copyTotals(this.exitedTotals);
    const live = this.supervisor.workers();
    for (const worker of live) if (worker.lastStats) addStats(totals, worker.lastStats);
    return { totals, liveWorkers: live.length };
  }
}

function emptyTotals(): UffdTotals {
  return { faults: 0, bytesCopied: 0, zeroPages: 0, prefetchedPages: 0, latencyCounts: new Array<number>(UFFD_LATENCY_BOUNDS_US.length + 1).fill(0), latencySumUs: 0 };
}

function copyTotals(totals: UffdTotals): UffdTotals {
  return { ...totals, latencyCounts: [...totals.latencyCounts] };
}

function addStats(totals: UffdTotals, stats: UffdWorkerStats): void {
  totals.faults += stats.faults;
  totals.bytesCopied += stats.bytesCopied;
  totals.zeroPages += stats.zeroPages;
  totals.prefetchedPages += stats.prefetchedPages;
  totals.latencySumUs += stats.latency.sumUs;
  // A worker's bucket "≤ b" goes into the first exported bucket whose bound is ≥ b (or +Inf): every cumulative
  // "≤ le" the histogram states stays true even if a worker ever reports other bounds than these.
  stats.latency.counts.forEach((count, index) => {
    const bound = stats.latency.upperBoundsUs[index];
    const target = bound === undefined ? -1 : UFFD_LATENCY_BOUNDS_US.findIndex((exported) => exported >= bound);
    totals.latencyCounts[target === -1 ? UFFD_LATENCY_BOUNDS_US.length : target] += count;
  });
}

/** One sample line as the prom-client registry formats it: `metricName{labels} value`. */
interface HistogramSample {
  readonly metricName: string;
  readonly labels: Record<string, string | number>;
  readonly value: number;
}

/**
 * A histogram metric whose buckets are set from counts, not observed. It has the shape the prom-client registry
 * (v15) reads from any registered metric: name, help, type, aggregator, get() → {…, values}, reset(). The
 * typings name only prom-client's own classes as registrable (and declare `type` as an enum while the registry
 * prints the string), hence the cast; the spec checks the text the registry renders from it.
 */
function latencyHistogram(name: string, snapshot: () => Promise<UffdSnapshot>): Metric {
  const metric = {
    name,
    help: 'UFFD worker page fault service time (event read to UFFDIO_COPY/ZEROPAGE returned)',
    type: 'histogram',
    aggregator: 'sum',
    async get() {
      const { totals } = await snapshot();
      const values: HistogramSample[] = [];
      let cumulative = 0;
      UFFD_LATENCY_BOUNDS_US.forEach((boundUs, index) => {
        cumulative += totals.latencyCounts[index];
        values.push({ metricName: `${name}_bucket`, labels: { le: boundUs / 1e6 }, value: cumulative });
      });
      cumulative += totals.latencyCounts[UFFD_LATENCY_BOUNDS_US.length];
      values.push({ metricName: `${name}_bucket`, labels: { le: '+Inf' }, value: cumulative });
      values.push({ metricName: `${name}_sum`, labels: {}, value: totals.latencySumUs / 1e6 });
      // _count is the +Inf bucket by definition; the workers' own `count` could differ by a racing fault.
      values.push({ metricName: `${name}_count`, labels: {}, value: cumulative });
      return { name, help: metric.help, type: metric.type, aggregator: metric.aggregator, values };
    },
    reset(): void {
      // Values are read from the workers at every scrape; there is nothing stored here to reset.
    },
  };
  return metric as unknown as Metric;
}
