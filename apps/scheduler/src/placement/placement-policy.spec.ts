import { seededRandom } from '@kiln/testing';
import type { FleetHostState, HostView } from '@kiln/messaging';
import {
  Locality,
  PlacementFleet,
  PlacementOptions,
  PlacementRequest,
  ReservedResources,
  placementCandidates,
  rankWholeFleet,
  scoreHost,
} from './placement-policy';

function host(hostId: string, overrides: Partial<HostView> & { used?: Partial<HostView['usage']>; cap?: Partial<HostView['capacity']> } = {}): HostView {
  const { used, cap, ...rest } = overrides;
  return {
    hostId,
    grpcAddress: `${hostId}:5000`,
    proxyUrl: `http://${hostId}:5007`,
    acceleration: 'kvm',
    agentVersion: 'test',
    state: 'ready',
    adminState: 'ready',
    stateChangedAt: '2026-12-07T00:00:00.000Z',
    registeredAt: '2026-12-07T00:00:00.000Z',
    lastHeartbeatAt: '2026-12-07T00:00:00.000Z',
    capacity: { vcpus: 16, memoryMib: 16384, diskMib: 100_000, sandboxes: 32, ...cap },
    usage: { vcpus: 0, memoryMib: 0, diskMib: 0, sandboxes: 0, diskUsedMib: 0, starting: 0, ...used },
    templates: [],
    readyCloneTemplates: [],
    createSuccesses: 0,
    createFails: 0,
    ...rest,
  };
}

function fleetOf(hosts: HostView[]): PlacementFleet {
  return {
    hosts,
    withTemplate: (templateId) => hosts.filter((h) => h.templates.includes(templateId) || h.readyCloneTemplates.includes(templateId)),
  };
}


const REQUEST: PlacementRequest = { templateId: 'base', vcpus: 2, memoryMib: 2048, diskMib: 4096 };

function options(overrides: Partial<PlacementOptions> = {}): PlacementOptions {
  return { sampleSize: 5, random: seededRandom(1), reserved: () => undefined, ...overrides };
}

const ids = (candidates: Array<{ host: HostView }>) => candidates.map((c) => c.host.hostId);

describe('placement policy', () => {
  it.each<FleetHostState>(['draining', 'cordoned', 'unhealthy', 'dead'])('never places on a %s host', (state) => {
    const fleet = fleetOf([host('a', { state }), host('b')]);
    expect(ids(placementCandidates(fleet, REQUEST, options()))).toEqual(['b']);
  });

  it('refuses a host without room for the vCPUs, memory, a sandbox slot or disk', () => {
    const fleet = fleetOf([
      host('no-vcpus', { used: { vcpus: 15 } }),
      host('no-memory', { used: { memoryMib: 15_000 } }),
      host('no-slot', { used: { sandboxes: 32 } }),
      host('no-disk', { used: { diskMib: 97_000 } }),
      host('fits-exactly', { used: { vcpus: 14, memoryMib: 14_336, sandboxes: 31, diskMib: 95_904 } }),
    ]);
    expect(ids(placementCandidates(fleet, REQUEST, options()))).toEqual(['fits-exactly']);
  });

  it('does not refuse on disk a host that reports no disk capacity', () => {
    expect(scoreHost(host('old-agent', { cap: { diskMib: 0 } }), REQUEST, undefined)).toBeDefined();
  });

  it("counts this replica's in-flight reservations as used", () => {
    const fleet = fleetOf([host('a', { used: { vcpus: 12 } }), host('b', { used: { vcpus: 10 } })]);
    const reserved = (hostId: string): ReservedResources | undefined => (hostId === 'a' ? { vcpus: 2, memoryMib: 2048, diskMib: 0, sandboxes: 1 } : undefined);
    // a: 16 - 12 - 2 reserved leaves exactly the 2 vCPUs asked for; with one more reservation on a, a is full.
    const full = (hostId: string) => (hostId === 'a' ? { vcpus: 4, memoryMib: 0, diskMib: 0, sandboxes: 2 } : undefined);
    expect(ids(placementCandidates(fleet, REQUEST, options({ reserved })))).toEqual(['b', 'a']);
    expect(ids(placementCandidates(fleet, REQUEST, options({ reserved: full })))).toEqual(['b']);
  });

  it('ranks a host with a clone ready above one caching the template above the rest, whatever their load', () => {
    const fleet = fleetOf([
      host('empty'),
      host('cached', { templates: ['base'], used: { vcpus: 10, memoryMib: 10_000 } }),
      host('clone', { templates: ['base'], readyCloneTemplates: ['base'], used: { vcpus: 12, memoryMib: 12_000 } }),
    ]);
    const ranked = placementCandidates(fleet, REQUEST, options());
    expect(ids(ranked)).toEqual(['clone', 'cached', 'empty']);
    expect(ranked.map((c) => c.locality)).toEqual([Locality.CloneReady, Locality.Cached, Locality.None]);
    // Another template: locality is gone, the emptiest host leads.
    expect(ids(placementCandidates(fleet, { ...REQUEST, templateId: 'other' }, options()))).toEqual(['empty', 'cached', 'clone']);
  });

  it('prefers the most free capacity (the scarcer of memory and vCPUs), then fewer sandboxes, then the host id', () => {
    const fleet = fleetOf([
      host('memory-tight', { used: { memoryMib: 12_288 } }),
      host('vcpu-tight', { used: { vcpus: 12 } }),
      host('busy', { used: { sandboxes: 10 } }),
      host('quiet-b'),
      host('quiet-a'),
    ]);
    expect(ids(placementCandidates(fleet, REQUEST, options()))).toEqual(['quiet-a', 'quiet-b', 'busy', 'memory-tight', 'vcpu-tight']);
  });

  it('samples at most K hosts per locality tier, and the same random draws pick the same hosts', () => {
    const hosts = Array.from({ length: 200 }, (_, i) => host(`h${String(i).padStart(3, '0')}`, { templates: i < 100 ? ['base'] : [] }));
    const fleet = fleetOf(hosts);
    const first = placementCandidates(fleet, REQUEST, options({ sampleSize: 3, random: seededRandom(42) }));
    expect(first).toHaveLength(6);
    expect(first.slice(0, 3).every((c) => c.locality === Locality.Cached)).toBe(true);
    expect(first.slice(3).every((c) => c.locality === Locality.None)).toBe(true);
    expect(new Set(ids(first)).size).toBe(6);
    expect(ids(placementCandidates(fleet, REQUEST, options({ sampleSize: 3, random: seededRandom(42) })))).toEqual(ids(first));
    expect(ids(placementCandidates(fleet, REQUEST, options({ sampleSize: 3, random: seededRandom(7) })))).not.toEqual(ids(first));
  });

  it('spreads: many decisions over equal hosts land on many of them, not on one', () => {
    const fleet = fleetOf(Array.from({ length: 100 }, (_, i) => host(`h${i}`)));
    const random = seededRandom(3);
    const chosen = new Set(Array.from({ length: 50 }, () => placementCandidates(fleet, REQUEST, options({ random }))[0].host.hostId));
    expect(chosen.size).toBeGreaterThan(20);
  });

  it('finds the one host with room in a nearly full fleet, where random draws keep missing', () => {
    const hosts = Array.from({ length: 500 }, (_, i) => host(`h${i}`, { used: { vcpus: 16 } }));
    hosts[377] = host('h377');
    expect(ids(placementCandidates(fleetOf(hosts), REQUEST, options({ random: seededRandom(9) })))).toEqual(['h377']);
  });

  it('with onlyHostId, offers that host if it is ready (full in the view: it decides) and nothing else', () => {
    const fleet = fleetOf([host('a'), host('b', { used: { vcpus: 16 } }), host('c', { state: 'draining' })]);
    expect(ids(placementCandidates(fleet, REQUEST, options({ onlyHostId: 'a' })))).toEqual(['a']);
    expect(ids(placementCandidates(fleet, REQUEST, options({ onlyHostId: 'b' })))).toEqual(['b']);
    expect(placementCandidates(fleet, REQUEST, options({ onlyHostId: 'b', reserved: () => ({ vcpus: 16, memoryMib: 0, diskMib: 0, sandboxes: 1 }) }))).toEqual([]);
    expect(placementCandidates(fleet, REQUEST, options({ onlyHostId: 'c' }))).toEqual([]);
    expect(placementCandidates(fleet, REQUEST, options({ onlyHostId: 'missing' }))).toEqual([]);
  });

  it('tries the ready hosts the view shows full when no host has room in the view (it trails the hosts)', () => {
    const fleet = fleetOf([
      host('full', { used: { vcpus: 16, sandboxes: 32 } }),
      host('fuller', { used: { vcpus: 16, memoryMib: 16384, sandboxes: 32 } }),
      host('drained', { state: 'draining' }),
    ]);
    expect(ids(placementCandidates(fleet, REQUEST, options())).sort()).toEqual(['full', 'fuller']);
    // This replica's own in-flight creates are exact, not trailing: a host they fill is not offered.
    const reserved = (hostId: string) => (hostId === 'full' ? { vcpus: 16, memoryMib: 0, diskMib: 0, sandboxes: 16 } : undefined);
    expect(ids(placementCandidates(fleet, REQUEST, options({ reserved })))).toEqual(['fuller']);
  });

  it('returns nothing when no host may take the sandbox', () => {
    expect(placementCandidates(fleetOf([]), REQUEST, options())).toEqual([]);
    expect(placementCandidates(fleetOf([host('a', { state: 'dead' })]), REQUEST, options())).toEqual([]);
  });

  it('agrees with the whole-fleet ranking on the best host when K covers the fleet', () => {
    const random = seededRandom(11);
    const hosts = Array.from({ length: 8 }, (_, i) =>
      host(`h${i}`, { used: { vcpus: Math.floor(random() * 14), memoryMib: Math.floor(random() * 14_000) }, templates: i % 3 === 0 ? ['base'] : [] }),
    );
    const fleet = fleetOf(hosts);
    expect(ids(placementCandidates(fleet, REQUEST, options({ sampleSize: 8 })))).toEqual(ids(rankWholeFleet(fleet, REQUEST, () => undefined)));
  });
});
