import type { SchedulerEnv } from '@kiln/config';
import type { HostView } from '@kiln/messaging';
import { MetricsRegistry } from '@kiln/telemetry';
import type { FleetViewService } from '../fleet/fleet-view.service';
import { PlacementService } from './placement.service';

function host(hostId: string, lastHeartbeatAt: string): HostView {
  return {
    hostId,
    grpcAddress: `${hostId}:5000`,
    proxyUrl: `http://${hostId}:5007`,
    acceleration: 'kvm',
    agentVersion: 'test',
    state: 'ready',
    adminState: 'ready',
    stateChangedAt: lastHeartbeatAt,
    registeredAt: lastHeartbeatAt,
    lastHeartbeatAt,
    capacity: { vcpus: 4, memoryMib: 4096, diskMib: 0, sandboxes: 4 },
    usage: { vcpus: 0, memoryMib: 0, diskMib: 0, sandboxes: 0, diskUsedMib: 0, starting: 0 },
    templates: ['base'],
    readyCloneTemplates: [],
    createSuccesses: 0,
    createFails: 0,
  };
}

/** A fleet view holding fixed hosts, replaced by the test as the monitor's KV entries would be. */
function fleetOf(hosts: HostView[]) {
  const fleet = {
    hosts,
    withTemplate: (templateId: string) => fleet.hosts.filter((h) => h.templates.includes(templateId)),
    get: (hostId: string) => fleet.hosts.find((h) => h.hostId === hostId),
  };
  return fleet;
}

const REQUEST = { templateId: 'base', vcpus: 1, memoryMib: 1024, diskMib: 0 };
const metrics = () => new MetricsRegistry();
const env = { PLACEMENT_SAMPLE_SIZE: 5 } as SchedulerEnv;

describe('PlacementService reservations', () => {
  const at = new Date(Date.now() - 60_000).toISOString();

  it('counts a reservation from the moment it is taken, so the next decision prefers the other host', () => {
    const placement = new PlacementService(env, fleetOf([host('a', at), host('b', at)]) as unknown as FleetViewService, metrics());
    const picks: string[] = [];
    for (let i = 0; i < 6; i++) {
      const [first] = placement.candidates(REQUEST);
      picks.push(first.hostId);
      placement.reserve(first.hostId, REQUEST);
    }
    expect(picks).toEqual(['a', 'b', 'a', 'b', 'a', 'b']);
    expect(placement.reservedOn('a')).toEqual({ vcpus: 3, memoryMib: 3072, diskMib: 0, sandboxes: 3 });
  });

  it('gives a host back its room when the create failed, and fills a host no further than its capacity', () => {
    const placement = new PlacementService(env, fleetOf([host('a', at)]) as unknown as FleetViewService, metrics());
    const held = [0, 1, 2, 3].map(() => placement.reserve('a', REQUEST));
    expect(placement.candidates(REQUEST)).toEqual([]);
    held[0].release();
    expect(placement.candidates(REQUEST).map((c) => c.hostId)).toEqual(['a']);
    for (const one of held.slice(1)) one.release();
    expect(placement.reservedOn('a')).toBeUndefined();
  });

  it('keeps a settled reservation until a heartbeat taken after the create shows it, or 10 s at most', () => {
    const fleet = fleetOf([host('a', at)]);
    const placement = new PlacementService(env, fleet as unknown as FleetViewService, metrics());
    placement.reserve('a', REQUEST).settle();
    expect(placement.reservedOn('a')?.sandboxes).toBe(1);
    // A heartbeat from after the create: its usage includes the sandbox, so the reservation is no longer needed.
    fleet.hosts = [host('a', new Date(Date.now() + 5).toISOString())];
    expect(placement.reservedOn('a')).toBeUndefined();

    fleet.hosts = [host('a', at)];
    placement.reserve('a', REQUEST).settle();
    expect(placement.reservedOn('a', Date.now() + 9_000)?.sandboxes).toBe(1);
    expect(placement.reservedOn('a', Date.now() + 11_000)).toBeUndefined();
  });

  it('offers only the named host for a snapshot, and counts placements by result', async () => {
    const registry = metrics();
    const placement = new PlacementService(env, fleetOf([host('a', at), host('b', at)]) as unknown as FleetViewService, registry);
    expect(placement.candidates(REQUEST, { onlyHostId: 'b' }).map((c) => c.hostId)).toEqual(['b']);
    placement.recordResult('placed');
    placement.recordResult('no_host');
    const values = (await registry.registry.getSingleMetric('kiln_placements_total')!.get()).values;
    expect(values.map((v) => [v.labels.result, v.value])).toEqual([['placed', 1], ['no_host', 1]]);
    const histogram = (await registry.registry.getSingleMetric('kiln_placement_duration_seconds')!.get()).values;
    expect(histogram.find((v) => (v as { metricName?: string }).metricName === 'kiln_placement_duration_seconds_count')?.value).toBe(1);
  });
});
