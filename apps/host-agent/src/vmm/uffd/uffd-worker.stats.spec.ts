import { parseUffdWorkerStats } from './uffd-worker.stats';
import { UffdWorkerStatsError } from './uffd.errors';

/** A line in the documented shape (docs/uffd-worker.md); each rejection case breaks exactly one thing of it. */
function statsLine(overrides: Record<string, unknown> = {}, latencyOverrides: Record<string, unknown> = {}): string {
  return JSON.stringify({
    state: 'serving',
    faults: 12,
    copied_pages: 9,
    zero_pages: 3,
    bytes_copied: 9 * 4096,
    prefetched_pages: 4,
    removed_pages: 2,
    eexist: 1,
    latency_us: {
      le: [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
      counts: [1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 5, 1],
      sum: 61234.5,
      count: 12,
      ...latencyOverrides,
    },
    ...overrides,
  });
}

describe('parseUffdWorkerStats', () => {
  it('maps every field of a well-formed line (control for the rejections below)', () => {
    expect(parseUffdWorkerStats(statsLine())).toEqual({
      state: 'serving',
      faults: 12,
      copiedPages: 9,
      zeroPages: 3,
      bytesCopied: 36864,
      prefetchedPages: 4,
      removedPages: 2,
      eexist: 1,
      latency: {
        upperBoundsUs: [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
        counts: [1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 5, 1],
        sumUs: 61234.5,
        count: 12,
      },
    });
  });

  it('accepts every documented state and ignores fields it does not know', () => {
    for (const state of ['verifying', 'waiting', 'serving', 'done']) {
      expect(parseUffdWorkerStats(statsLine({ state, future_counter: 7 })).state).toBe(state);
    }
  });

  it.each([
    ['not JSON', 'faults=3'],
    ['an array', '[1,2]'],
    ['an unknown state', statsLine({ state: 'idle' })],
    ['a missing counter', statsLine({ faults: undefined })],
    ['a negative counter', statsLine({ zero_pages: -1 })],
    ['a fractional counter', statsLine({ copied_pages: 1.5 })],
    ['a counter given as a string', statsLine({ bytes_copied: '4096' })],
    ['no latency object', statsLine({ latency_us: undefined })],
    ['empty bounds', statsLine({}, { le: [], counts: [0] })],
    ['bounds that do not increase', statsLine({}, { le: [5, 5, 25], counts: [0, 0, 0, 0] })],
    ['one bucket short (counts must be le.length + 1)', statsLine({}, { counts: [1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 5] })],
    ['a negative bucket', statsLine({}, { counts: [1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 5, -1] })],
    ['a negative sum', statsLine({}, { sum: -2 })],
  ])('rejects %s with UffdWorkerStatsError', (_case, line) => {
    expect(() => parseUffdWorkerStats(line)).toThrow(UffdWorkerStatsError);
  });
});
