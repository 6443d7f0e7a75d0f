/**
 * Issue 15's placement benchmark: what one placement decision costs over a fleet of 1000 hosts, measured in one run
 * against a baseline from the same run.
 *  - best-of-K (the scheduler's placement, PLACEMENT_SAMPLE_SIZE 5): apps/scheduler/src/placement/placement-policy.ts
 *    over the scheduler's own FleetViewService, fed the 1000 HostViews as its KV watch would feed them.
 *  - baseline: the algorithm placement had before the fleet view: every eligible host scored, the whole fleet sorted
 *    (rankWholeFleet, the same scoring), over the same view and reservations. (The old code also read the hosts and
 *    their usage from Postgres on every decision; that cost is left out, so the ratio is the in-memory part only.)
 * Both run twice: on a still view, and with the view changing between decisions as it does in a deployment (every
 * host's heartbeat flushed once a second: 10 host updates between two decisions at 100 placements a second).
 *
 * Simulated fleet: 1000 hosts; 95% ready, the rest draining, cordoned, unhealthy or dead; 64 vCPUs, 256 GiB, 200
 * sandboxes each, 0-95% used; 20 templates: `base` cached on 90% of hosts (a clone ready on a third of those), the
 * others on 5-30%; a few in-flight reservations of this replica spread over the fleet. Requests cycle over templates.
 *
 * Run: node tools/bench/run-bench.mjs tools/bench/placement.bench.ts
 * Env: BENCH_DECISIONS (default 20000 per variant), BENCH_HOSTS (default 1000).
 */
import 'reflect-metadata';
import { performance } from 'node:perf_hooks';
import type { FleetHostState, HostView, NatsConnectionHolder } from '@kiln/messaging';
import { seededRandom } from '@kiln/testing';
import { FleetViewService } from '../../apps/scheduler/src/fleet/fleet-view.service';
import { PlacementRequest, ReservedResources, placementCandidates, rankWholeFleet } from '../../apps/scheduler/src/placement/placement-policy';
import { percentile } from './support/sample-stats';

const DECISIONS = Number(process.env.BENCH_DECISIONS ?? 20_000);
const HOSTS = Number(process.env.BENCH_HOSTS ?? 1000);
const SAMPLE_SIZE = 5;
const UPDATES_BETWEEN_DECISIONS = 10;
const WARMUP = 2_000;


const random = seededRandom(15);
const TEMPLATES = ['base', ...Array.from({ length: 19 }, (_, i) => `tpl-${i}`)];
const TEMPLATE_SHARE = new Map(TEMPLATES.map((t, i) => [t, i === 0 ? 0.9 : 0.05 + random() * 0.25]));

function simulatedHost(i: number): HostView {
  const roll = random();
  const state: FleetHostState = roll < 0.95 ? 'ready' : (['draining', 'cordoned', 'unhealthy', 'dead'] as const)[Math.floor(random() * 4)];
  const used = random() * 0.95;
  const templates = TEMPLATES.filter((t) => random() < TEMPLATE_SHARE.get(t)!);
  const now = new Date().toISOString();
  return {
    hostId: `bench-host-${String(i).padStart(4, '0')}`,
    grpcAddress: `10.0.${Math.floor(i / 250)}.${i % 250}:5000`,
    proxyUrl: `http://10.0.${Math.floor(i / 250)}.${i % 250}:5007`,
    acceleration: 'kvm',
    agentVersion: 'bench',
    state,
    adminState: state === 'draining' || state === 'cordoned' ? state : 'ready',
    stateChangedAt: now,
    registeredAt: now,
    lastHeartbeatAt: now,
    capacity: { vcpus: 64, memoryMib: 262_144, diskMib: 2_000_000, sandboxes: 200 },
    usage: {
      vcpus: Math.floor(64 * used),
      memoryMib: Math.floor(262_144 * used),
      diskMib: Math.floor(2_000_000 * used),
      sandboxes: Math.floor(200 * used),
      diskUsedMib: Math.floor(1_000_000 * used),
      starting: 0,
    },
    templates,
    readyCloneTemplates: templates.filter((t) => t === 'base' && random() < 0.33),
    createSuccesses: 0,
    createFails: 0,
  };
}

/** The scheduler's fleet view, fed entries as its KV watch feeds them (no NATS: the watch is not what is measured). */
function fleetViewOf(hosts: HostView[]): { view: FleetViewService; put(host: HostView): void } {
  const view = new FleetViewService({} as NatsConnectionHolder);
  const apply = (view as unknown as { apply(entry: { operation: 'PUT'; key: string; json<T>(): T }): void }).apply.bind(view);
  const put = (host: HostView) => apply({ operation: 'PUT', key: host.hostId, json: <T>() => JSON.parse(JSON.stringify(host)) as T });
  for (const host of hosts) put(host);
  return { view, put };
}

type Decide = (request: PlacementRequest) => number;

function measure(decide: Decide, requests: PlacementRequest[], between?: () => void): number[] {
  const samples: number[] = [];
  let sink = 0;
  for (let i = 0; i < WARMUP + DECISIONS; i++) {
    between?.();
    const request = requests[i % requests.length];
    const started = performance.now();
    sink += decide(request);
    const elapsed = performance.now() - started;
    if (i >= WARMUP) samples.push(elapsed * 1000);
  }
  if (sink < 0) console.log(sink);
  return samples;
}

function main(): void {
  const hosts = Array.from({ length: HOSTS }, (_, i) => simulatedHost(i));
  const { view, put } = fleetViewOf(hosts);
  const reservations = new Map<string, ReservedResources>();
  for (let i = 0; i < HOSTS; i += 37) reservations.set(hosts[i].hostId, { vcpus: 2, memoryMib: 4096, diskMib: 8192, sandboxes: 1 });
  const reserved = (hostId: string) => reservations.get(hostId);
  const requests: PlacementRequest[] = TEMPLATES.flatMap((templateId, i) =>
    Array.from({ length: templateId === 'base' ? 10 : 1 }, () => ({ templateId, vcpus: 1 + (i % 4), memoryMib: 1024 * (1 + (i % 4)), diskMib: 4096 })),
  );
  const bestOfK: Decide = (request) => placementCandidates(view, request, { sampleSize: SAMPLE_SIZE, random: Math.random, reserved }).length;
  const fullSort: Decide = (request) => rankWholeFleet(view, request, reserved).length;

  const churnRandom = seededRandom(99);
  const churn = () => {
    for (let u = 0; u < UPDATES_BETWEEN_DECISIONS; u++) {
      const host = view.hosts[Math.floor(churnRandom() * view.hosts.length)];
      const sandboxes = Math.min(host.capacity.sandboxes, Math.max(0, host.usage.sandboxes + (churnRandom() < 0.5 ? -1 : 1)));
      put({ ...host, lastHeartbeatAt: new Date().toISOString(), usage: { ...host.usage, sandboxes } });
    }
  };

  const ready = hosts.filter((h) => h.state === 'ready').length;
  console.log(
    `placement benchmark: ${HOSTS} simulated hosts (${ready} ready), ${TEMPLATES.length} templates, K=${SAMPLE_SIZE}, ${DECISIONS} decisions per variant after ${WARMUP} warm-up`,
  );
  const rows: Array<[string, number[]]> = [];
  // Interleaved per variant pair so both see the same machine state.
  rows.push(['best-of-K, still view', measure(bestOfK, requests)]);
  rows.push(['full sort (baseline), still view', measure(fullSort, requests)]);
  rows.push([`best-of-K, ${UPDATES_BETWEEN_DECISIONS} host updates between decisions`, measure(bestOfK, requests, churn)]);
  rows.push([`full sort (baseline), ${UPDATES_BETWEEN_DECISIONS} host updates between decisions`, measure(fullSort, requests, churn)]);
  for (const [label, samples] of rows) {
    console.log(`${label.padEnd(62)} p50 ${percentile(samples, 50).toFixed(1).padStart(8)} µs   p99 ${percentile(samples, 99).toFixed(1).padStart(8)} µs`);
  }
  const ratio = (a: number[], b: number[], p: number) => (percentile(b, p) / percentile(a, p)).toFixed(1);
  console.log(`\nbaseline / best-of-K, still view:    p50 ${ratio(rows[0][1], rows[1][1], 50)}x   p99 ${ratio(rows[0][1], rows[1][1], 99)}x`);
  console.log(`baseline / best-of-K, changing view: p50 ${ratio(rows[2][1], rows[3][1], 50)}x   p99 ${ratio(rows[2][1], rows[3][1], 99)}x`);
}

main();
