import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MetricsRegistry } from '@kiln/telemetry';
import { UffdMetrics } from './uffd-metrics';
import { UffdWorkerSupervisor, type UffdWorkerProcess } from './uffd-worker.supervisor';

/**
 * The metrics need workers whose counters the test chooses, which the real worker (whose counters only move
 * when a peer faults pages through a userfaultfd) cannot give from here: a stand-in speaking the worker's CLI
 * and stats protocol. It answers each stats connection with the contents of `<stats-socket>.json`, prints
 * `ready`, and when something connects to its --socket (the peer arriving and leaving) prints its final stats
 * line from `<stats-socket>.final.json` on stdout and exits 0, as a worker whose peer went away.
 */
const FAKE_WORKER = `
const { createServer } = require('node:net');
const { readFileSync, unlinkSync } = require('node:fs');
const arg = (name) => process.argv[process.argv.indexOf(name) + 1];
const socketPath = arg('--socket');
const statsPath = arg('--stats-socket');
const stats = createServer((c) => { let line; try { line = readFileSync(statsPath + '.json', 'utf8').trim(); } catch { line = ''; } c.end(line + '\\n'); });
const peer = createServer((c) => {
  c.destroy();
  process.stdout.write(readFileSync(statsPath + '.final.json', 'utf8').trim() + '\\n', () => process.exit(0));
});
stats.listen(statsPath, () => peer.listen(socketPath, () => process.stdout.write('ready\\n')));
process.on('SIGTERM', () => { for (const p of [socketPath, statsPath]) { try { unlinkSync(p); } catch {} } process.exit(0); });
`;

const BOUNDS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

interface FakeStats {
  faults: number;
  copied: number;
  zero: number;
  prefetched: number;
  counts: number[];
  sumUs: number;
  le?: number[];
}

function statsJson(stats: FakeStats): string {
  return JSON.stringify({
    state: 'serving',
    faults: stats.faults,
    copied_pages: stats.copied,
    zero_pages: stats.zero,
    bytes_copied: stats.copied * 4096,
    prefetched_pages: stats.prefetched,
    removed_pages: 0,
    eexist: 0,
    latency_us: { le: stats.le ?? BOUNDS, counts: stats.counts, sum: stats.sumUs, count: stats.counts.reduce((a, b) => a + b, 0) },
  });
}

/** counts with `n` in the bucket of bound `boundUs` (or +Inf for undefined). */
function bucket(entries: Array<[number | undefined, number]>, bounds = BOUNDS): number[] {
  const counts = new Array<number>(bounds.length + 1).fill(0);
  for (const [boundUs, n] of entries) counts[boundUs === undefined ? bounds.length : bounds.indexOf(boundUs)] += n;
  return counts;
}

/** The sample lines of one metric family in the rendered text (HELP/TYPE excluded), as `name{labels} value`. */
function samples(text: string, family: string): string[] {
  return text.split('\n').filter((line) => line.startsWith(family) && !line.startsWith('#'));
}

describe('UffdMetrics', () => {
  let dir: string;
  let supervisor: UffdWorkerSupervisor;
  let metrics: MetricsRegistry;
  const started: UffdWorkerProcess[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-uffd-metrics-'));
    const binary = join(dir, 'fake-uffd-worker');
    await writeFile(binary, `#!${process.execPath}\n${FAKE_WORKER}`);
    await chmod(binary, 0o755);
    supervisor = new UffdWorkerSupervisor(binary);
    metrics = new MetricsRegistry();
    metrics.setService('host-agent');
    new UffdMetrics(metrics, supervisor);
  });

  afterEach(async () => {
    await Promise.all(started.splice(0).map((worker) => worker.stop()));
    await rm(dir, { recursive: true, force: true });
  });

  async function startFake(name: string, stats: FakeStats, final?: FakeStats): Promise<UffdWorkerProcess> {
    const statsSocketPath = join(dir, `${name}.stats`);
    await writeFile(`${statsSocketPath}.json`, statsJson(stats));
    await writeFile(`${statsSocketPath}.final.json`, statsJson(final ?? stats));
    const worker = await supervisor.start({ snapshotDir: dir, socketPath: join(dir, `${name}.sock`), statsSocketPath, timeoutMs: 10_000 });
    started.push(worker);
    return worker;
  }

  /** Scrapes are cached for 1 s across the families of one scrape; a test that changed state waits that out. */
  async function scrape(): Promise<string> {
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    return metrics.registry.metrics();
  }

  it('renders live workers summed: counters, the worker gauge and a cumulative histogram in seconds', async () => {
    await startFake('a', { faults: 10, copied: 7, zero: 3, prefetched: 2, counts: bucket([[5, 4], [25, 5], [undefined, 1]]), sumUs: 20_000 });
    await startFake('b', { faults: 5, copied: 5, zero: 0, prefetched: 0, counts: bucket([[10, 3], [10000, 2]]), sumUs: 15_000 });

    const text = await metrics.registry.metrics();

    expect(samples(text, 'kiln_uffd_page_faults_total')).toEqual(['kiln_uffd_page_faults_total{service="host-agent"} 15']);
    expect(samples(text, 'kiln_uffd_bytes_copied_total')).toEqual([`kiln_uffd_bytes_copied_total{service="host-agent"} ${12 * 4096}`]);
    expect(samples(text, 'kiln_uffd_zero_pages_total')).toEqual(['kiln_uffd_zero_pages_total{service="host-agent"} 3']);
    expect(samples(text, 'kiln_uffd_prefetched_pages_total')).toEqual(['kiln_uffd_prefetched_pages_total{service="host-agent"} 2']);
    expect(samples(text, 'kiln_uffd_workers')).toEqual(['kiln_uffd_workers{service="host-agent"} 2']);
    expect(text).toContain('# TYPE kiln_uffd_fault_latency_seconds histogram');
    expect(text).toContain('# TYPE kiln_uffd_page_faults_total counter');
    expect(samples(text, 'kiln_uffd_fault_latency_seconds')).toEqual([
      'kiln_uffd_fault_latency_seconds_bucket{le="0.000005",service="host-agent"} 4',
      'kiln_uffd_fault_latency_seconds_bucket{le="0.00001",service="host-agent"} 7',
      'kiln_uffd_fault_latency_seconds_bucket{le="0.000025",service="host-agent"} 12',
      'kiln_uffd_fault_latency_seconds_bucket{le="0.00005",service="host-agent"} 12',
      'kiln_uffd_fault_latency_seconds_bucket{le="0.0001",service="host-agent"} 12',
      'kiln_uffd_fault_latency_seconds_bucket{le="0.00025",service="host-agent"} 12',
      'kiln_uffd_fault_latency_seconds_bucket{le="0.0005",service="host-agent"} 12',
      'kiln_uffd_fault_latency_seconds_bucket{le="0.001",service="host-agent"} 12',
      'kiln_uffd_fault_latency_seconds_bucket{le="0.0025",service="host-agent"} 12',
      'kiln_uffd_fault_latency_seconds_bucket{le="0.005",service="host-agent"} 12',
      'kiln_uffd_fault_latency_seconds_bucket{le="0.01",service="host-agent"} 14',
      'kiln_uffd_fault_latency_seconds_bucket{le="+Inf",service="host-agent"} 15',
      'kiln_uffd_fault_latency_seconds_sum{service="host-agent"} 0.035',
      'kiln_uffd_fault_latency_seconds_count{service="host-agent"} 15',
    ]);
    // The registry's JSON view reads the same metric (get()): the histogram is a full citizen of the registry.
    const json = await metrics.registry.getMetricsAsJSON();
    expect(json.find((metric) => metric.name === 'kiln_uffd_fault_latency_seconds')?.values).toHaveLength(BOUNDS.length + 3);
  });

  it('keeps the totals of a stopped worker (read once more before SIGTERM) and of one whose peer went away', async () => {
    const stopped = await startFake('stopped', { faults: 4, copied: 4, zero: 0, prefetched: 0, counts: bucket([[50, 4]]), sumUs: 160 });
    // Its stats file moves on after the first scrape: stop() must read the newest, not reuse the scrape's.
    await metrics.registry.metrics();
    await writeFile(join(dir, 'stopped.stats.json'), statsJson({ faults: 6, copied: 6, zero: 0, prefetched: 0, counts: bucket([[50, 6]]), sumUs: 240 }));
    const finished = await startFake(
      'finished',
      { faults: 1, copied: 1, zero: 0, prefetched: 0, counts: bucket([[100, 1]]), sumUs: 90 },
      // What it prints on stdout as it exits: newer than anything its stats socket said.
      { faults: 3, copied: 2, zero: 1, prefetched: 5, counts: bucket([[100, 3]]), sumUs: 270 },
    );
    const live = await startFake('live', { faults: 2, copied: 2, zero: 0, prefetched: 0, counts: bucket([[5, 2]]), sumUs: 6 });

    await stopped.stop();
    await new Promise<void>((resolve, reject) => connect(join(dir, 'finished.sock')).once('connect', resolve).once('error', reject));
    expect(await finished.exited).toEqual({ code: 0, signal: null });
    // exited settles before the supervisor's own exit handler (registered later) has run: give it that turn.
    await new Promise((resolve) => setTimeout(resolve, 50));

    const text = await scrape();
    expect(supervisor.workers()).toEqual([live]);
    expect(samples(text, 'kiln_uffd_workers')).toEqual(['kiln_uffd_workers{service="host-agent"} 1']);
    expect(samples(text, 'kiln_uffd_page_faults_total')).toEqual(['kiln_uffd_page_faults_total{service="host-agent"} 11']);
    expect(samples(text, 'kiln_uffd_prefetched_pages_total')).toEqual(['kiln_uffd_prefetched_pages_total{service="host-agent"} 5']);
    expect(samples(text, 'kiln_uffd_fault_latency_seconds_count')).toEqual(['kiln_uffd_fault_latency_seconds_count{service="host-agent"} 11']);
    expect(samples(text, 'kiln_uffd_fault_latency_seconds_bucket{le="0.00005"')).toEqual([
      'kiln_uffd_fault_latency_seconds_bucket{le="0.00005",service="host-agent"} 8',
    ]);
  });

  it('falls back to a worker’s last stats when its stats socket answers garbage, and never goes backwards', async () => {
    await startFake('flaky', { faults: 9, copied: 9, zero: 0, prefetched: 0, counts: bucket([[5, 9]]), sumUs: 27 });
    expect(samples(await metrics.registry.metrics(), 'kiln_uffd_page_faults_total')).toEqual(['kiln_uffd_page_faults_total{service="host-agent"} 9']);

    await writeFile(join(dir, 'flaky.stats.json'), '{"state":"serving","faults":"lots"}');
    expect(samples(await scrape(), 'kiln_uffd_page_faults_total')).toEqual(['kiln_uffd_page_faults_total{service="host-agent"} 9']);
  });

  it('puts buckets of a worker with other bounds into the first exported bound at or above them', async () => {
    // ≤7 µs → the 10 µs bucket; ≤20 ms (above every exported bound) and the overflow → +Inf only.
    await startFake('other-bounds', { faults: 3, copied: 3, zero: 0, prefetched: 0, le: [7, 20_000], counts: [1, 1, 1], sumUs: 40_000 });
    const buckets = samples(await metrics.registry.metrics(), 'kiln_uffd_fault_latency_seconds_bucket');
    expect(buckets[0]).toBe('kiln_uffd_fault_latency_seconds_bucket{le="0.000005",service="host-agent"} 0');
    expect(buckets[1]).toBe('kiln_uffd_fault_latency_seconds_bucket{le="0.00001",service="host-agent"} 1');
    expect(buckets[10]).toBe('kiln_uffd_fault_latency_seconds_bucket{le="0.01",service="host-agent"} 1');
    expect(buckets[11]).toBe('kiln_uffd_fault_latency_seconds_bucket{le="+Inf",service="host-agent"} 3');
  });
});
