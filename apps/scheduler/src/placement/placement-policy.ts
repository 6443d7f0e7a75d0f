import type { HostView } from '@kiln/messaging';

/** What one sandbox needs from a host. `diskMib` is checked only against hosts that report a disk capacity. */
export interface PlacementRequest {
  templateId: string;
  vcpus: number;
  memoryMib: number;
  diskMib: number;
}

/** Resources this replica has promised on a host for creates whose effect the host's heartbeats do not show yet. */
export interface ReservedResources {
  vcpus: number;
  memoryMib: number;
  diskMib: number;
  sandboxes: number;
}

/**
 * The fleet as placement reads it: every host, and an index of the hosts that hold a template (its current build
 * cached, or a restored clone of it waiting), so that finding the local hosts never walks the whole fleet.
 */
export interface PlacementFleet {
  readonly hosts: readonly HostView[];
  withTemplate(templateId: string): readonly HostView[];
}

export interface PlacementOptions {
  /** K: how many hosts of each locality tier are sampled and scored. */
  sampleSize: number;
  /** In [0, 1); injected so a decision is reproducible in tests and benchmarks. */
  random: () => number;
  reserved: (hostId: string) => ReservedResources | undefined;
  /** Only this host may take the sandbox (a named snapshot's artifacts live on one host). */
  onlyHostId?: string;
  /** Hosts' reported usage is set aside (the fallback when no host has room in the view); reservations still count. */
  ignoreReportedUsage?: boolean;
}

/** Locality of a host for a template: a waiting clone skips the restore, a cached build skips the fetch. */
export enum Locality {
  None = 0,
  Cached = 1,
  CloneReady = 2,
}

export interface ScoredHost {
  host: HostView;
  locality: Locality;
  /** The smaller of the free memory and free vCPU fractions left once this sandbox is placed, in [0, 1]. */
  freeFraction: number;
  /** Sandboxes on the host, counting this replica's reservations: fewer wins a tie (spread). */
  sandboxes: number;
}

/** How often a random draw may miss (an ineligible or already drawn host) before a tier is walked instead. */
const DRAWS_PER_SAMPLE = 4;

export function localityOf(host: HostView, templateId: string): Locality {
  if (host.readyCloneTemplates.includes(templateId)) return Locality.CloneReady;
  if (host.templates.includes(templateId)) return Locality.Cached;
  return Locality.None;
}

/**
 * Scores a host for the request, or undefined when it may not take it: not `ready` (draining, cordoned, unhealthy
 * and dead hosts get nothing new), or without room once its reported usage and this replica's reservations are
 * counted.
 */
export function scoreHost(
  host: HostView,
  request: PlacementRequest,
  reserved: ReservedResources | undefined,
  locality = localityOf(host, request.templateId),
  ignoreReportedUsage = false,
): ScoredHost | undefined {
  if (host.state !== 'ready') return undefined;
  const held = reserved ?? NOTHING_RESERVED;
  const used = ignoreReportedUsage ? NOTHING_RESERVED : host.usage;
  const freeVcpus = host.capacity.vcpus - used.vcpus - held.vcpus - request.vcpus;
  const freeMemory = host.capacity.memoryMib - used.memoryMib - held.memoryMib - request.memoryMib;
  const sandboxes = used.sandboxes + held.sandboxes;
  if (freeVcpus < 0 || freeMemory < 0 || sandboxes + 1 > host.capacity.sandboxes) return undefined;
  // A host that reports no disk capacity (an agent from before disk accounting) is not refused on disk.
  if (host.capacity.diskMib > 0 && host.capacity.diskMib - used.diskMib - held.diskMib < request.diskMib) return undefined;
  const freeFraction = Math.min(freeMemory / host.capacity.memoryMib, freeVcpus / host.capacity.vcpus);
  return { host, locality, freeFraction, sandboxes };
}

/**
 * Best first: locality outweighs everything (a clone-ready host, then a caching one), then the most free capacity,
 * then the fewest sandboxes (spread), then the host id so equal hosts order the same on every replica.
 */
export function compareScored(a: ScoredHost, b: ScoredHost): number {
  return b.locality - a.locality || b.freeFraction - a.freeFraction || a.sandboxes - b.sandboxes || (a.host.hostId < b.host.hostId ? -1 : a.host.hostId > b.host.hostId ? 1 : 0);
}

/**
 * Best-of-K placement: from each locality tier (clone ready, cached, the rest) up to K eligible hosts are drawn at
 * random and the drawn hosts are ranked, so a decision costs O(K) whatever the fleet's size, and replicas deciding at
 * the same moment spread over different good hosts instead of all picking the one emptiest host. Returns the
 * ranked candidates (the caller falls through them when a host turns out to be full); empty when no host may take it.
 */
export function placementCandidates(fleet: PlacementFleet, request: PlacementRequest, options: PlacementOptions): ScoredHost[] {
  if (options.onlyHostId !== undefined) {
    const host = fleet.hosts.find((h) => h.hostId === options.onlyHostId);
    // The view may trail the host (see below): a ready host with no room in the view is still asked.
    const scored = host && (scoreHost(host, request, options.reserved(host.hostId)) ?? scoreHost(host, request, options.reserved(host.hostId), undefined, true));
    return scored ? [scored] : [];
  }
  const local = fleet.withTemplate(request.templateId);
  const cloneReady: HostView[] = [];
  const cached: HostView[] = [];
  for (const host of local) (host.readyCloneTemplates.includes(request.templateId) ? cloneReady : cached).push(host);
  const chosen = [
    ...sampleEligible(cloneReady, request, options, Locality.CloneReady),
    ...sampleEligible(cached, request, options, Locality.Cached),
    // The rest of the fleet: a host holding the template was a candidate above already.
    ...sampleEligible(fleet.hosts, request, options, Locality.None, (host) => localityOf(host, request.templateId) === Locality.None),
  ];
  if (chosen.length) return chosen.sort(compareScored);
  // No ready host has room as the view tells it. The view trails the hosts by a heartbeat and a flush (about 3 s), so
  // sandboxes killed just now may still be counted: ready hosts are tried anyway with their reported usage set aside
  // (this replica's own in-flight creates still count), and each decides for itself (a full one answers
  // RESOURCE_EXHAUSTED and the create moves on).
  return sampleEligible(fleet.hosts, request, { ...options, ignoreReportedUsage: true }, Locality.None).map((scored) => ({
    ...scored,
    locality: localityOf(scored.host, request.templateId),
  })).sort(compareScored);
}

/**
 * Up to K eligible hosts of `tier`, drawn at random without replacement. Random draws are cheap while most hosts
 * are eligible; once draws keep missing (a nearly full tier) the tier is walked from a random offset instead, so a
 * tier with any eligible host never comes back empty.
 */
function sampleEligible(
  tier: readonly HostView[],
  request: PlacementRequest,
  options: PlacementOptions,
  locality: Locality,
  belongs: (host: HostView) => boolean = () => true,
): ScoredHost[] {
  const wanted = Math.min(options.sampleSize, tier.length);
  const picked: ScoredHost[] = [];
  if (wanted === 0) return picked;
  const seen = new Set<number>();
  const consider = (index: number): void => {
    if (seen.has(index)) return;
    seen.add(index);
    const host = tier[index];
    if (!belongs(host)) return;
    const scored = scoreHost(host, request, options.reserved(host.hostId), locality, options.ignoreReportedUsage);
    if (scored) picked.push(scored);
  };
  if (tier.length <= options.sampleSize) {
    for (let i = 0; i < tier.length; i++) consider(i);
    return picked;
  }
  for (let draws = 0; picked.length < wanted && draws < wanted * DRAWS_PER_SAMPLE; draws++) {
    consider(Math.floor(options.random() * tier.length));
  }
  if (picked.length < wanted) {
    const start = Math.floor(options.random() * tier.length);
    for (let step = 0; step < tier.length && picked.length < wanted; step++) consider((start + step) % tier.length);
  }
  return picked;
}

/**
 * The placement before best-of-K: every eligible host scored and the whole fleet sorted. Kept as the baseline the
 * placement benchmark compares against (tools/bench/placement.bench.ts); not used to place.
 */
export function rankWholeFleet(fleet: PlacementFleet, request: PlacementRequest, reserved: PlacementOptions['reserved']): ScoredHost[] {
  const scored: ScoredHost[] = [];
  for (const host of fleet.hosts) {
    const one = scoreHost(host, request, reserved(host.hostId));
    if (one) scored.push(one);
  }
  return scored.sort(compareScored);
}

const NOTHING_RESERVED: ReservedResources = { vcpus: 0, memoryMib: 0, diskMib: 0, sandboxes: 0 };
