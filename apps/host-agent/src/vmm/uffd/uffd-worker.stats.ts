import { UffdWorkerStatsError } from './uffd.errors';

export type UffdWorkerState = 'verifying' | 'waiting' | 'serving' | 'done';

const STATES: readonly UffdWorkerState[] = ['verifying', 'waiting', 'serving', 'done'];

/**
 * The worker's fault latency (event read → UFFDIO_COPY/ZEROPAGE returned), in microseconds.
 * `counts` are per bucket, not cumulative: counts[i] = faults with latency ≤ upperBoundsUs[i] and above the
 * previous bound; the last entry (counts.length = upperBoundsUs.length + 1) = faults above the largest bound.
 */
export interface UffdFaultLatencyHistogram {
  readonly upperBoundsUs: readonly number[];
  readonly counts: readonly number[];
  readonly sumUs: number;
  readonly count: number;
}

/** One stats line of a worker (the JSON it writes on each connection to its --stats-socket). */
export interface UffdWorkerStats {
  readonly state: UffdWorkerState;
  /** UFFD_EVENT_PAGEFAULT events served. */
  readonly faults: number;
  readonly copiedPages: number;
  readonly zeroPages: number;
  readonly bytesCopied: number;
  readonly prefetchedPages: number;
  /** Pages the guest gave back (UFFD_EVENT_REMOVE, the balloon): zero from then on. */
  readonly removedPages: number;
  /** UFFDIO_COPY answers of EEXIST (the page was already there: prefetch raced a fault). */
  readonly eexist: number;
  readonly latency: UffdFaultLatencyHistogram;
}

/**
 * Parses one stats line. Rejects anything that is not the documented shape (missing or extra-typed fields,
 * negative or fractional counters, unknown state, bounds not increasing, wrong bucket count) with
 * UffdWorkerStatsError: numbers that feed Prometheus counters must not be guessed. Unknown extra fields are
 * ignored so a newer worker can add counters without breaking an older agent.
 */
export function parseUffdWorkerStats(line: string): UffdWorkerStats {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch (error) {
    throw new UffdWorkerStatsError(`UFFD worker stats are not JSON: ${(error as Error).message}`);
  }
  const record = asRecord(raw, 'stats');
  const state = record.state;
  if (typeof state !== 'string' || !STATES.includes(state as UffdWorkerState)) {
    throw new UffdWorkerStatsError(`UFFD worker stats: state ${JSON.stringify(state)} is not one of ${STATES.join('|')}`);
  }
  const latency = asRecord(record.latency_us, 'latency_us');
  const upperBoundsUs = numberArray(latency.le, 'latency_us.le', false);
  if (upperBoundsUs.length === 0) throw new UffdWorkerStatsError('UFFD worker stats: latency_us.le is empty');
  upperBoundsUs.forEach((bound, index) => {
    if (!(bound > 0)) throw new UffdWorkerStatsError(`UFFD worker stats: latency_us.le[${index}] = ${bound} is not positive`);
    if (index > 0 && bound <= upperBoundsUs[index - 1]) {
      throw new UffdWorkerStatsError(`UFFD worker stats: latency_us.le is not strictly increasing at ${index}`);
    }
  });
  const counts = numberArray(latency.counts, 'latency_us.counts', true);
  if (counts.length !== upperBoundsUs.length + 1) {
    throw new UffdWorkerStatsError(
      `UFFD worker stats: latency_us.counts has ${counts.length} buckets, expected ${upperBoundsUs.length + 1} (le.length + 1)`,
    );
  }
  return {
    state: state as UffdWorkerState,
    faults: counter(record, 'faults'),
    copiedPages: counter(record, 'copied_pages'),
    zeroPages: counter(record, 'zero_pages'),
    bytesCopied: counter(record, 'bytes_copied'),
    prefetchedPages: counter(record, 'prefetched_pages'),
    removedPages: counter(record, 'removed_pages'),
    eexist: counter(record, 'eexist'),
    latency: { upperBoundsUs, counts, sumUs: nonNegative(latency.sum, 'latency_us.sum', false), count: counter(latency, 'count', 'latency_us.') },
  };
}

function asRecord(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new UffdWorkerStatsError(`UFFD worker stats: ${what} is not an object`);
  }
  return value as Record<string, unknown>;
}

function counter(record: Record<string, unknown>, field: string, prefix = ''): number {
  return nonNegative(record[field], prefix + field, true);
}

function nonNegative(value: unknown, what: string, integer: boolean): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (integer && !Number.isSafeInteger(value))) {
    throw new UffdWorkerStatsError(
      `UFFD worker stats: ${what} = ${JSON.stringify(value)} is not a non-negative ${integer ? 'integer' : 'number'}`,
    );
  }
  return value;
}

function numberArray(value: unknown, what: string, integers: boolean): number[] {
  if (!Array.isArray(value)) throw new UffdWorkerStatsError(`UFFD worker stats: ${what} is not an array`);
  return value.map((item, index) => nonNegative(item, `${what}[${index}]`, integers));
}
