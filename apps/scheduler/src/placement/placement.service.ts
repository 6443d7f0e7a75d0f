import { Injectable } from '@nestjs/common';
import { SchedulerEnv } from '@kiln/config';
import { MetricsRegistry } from '@kiln/telemetry';
import { FleetViewService } from '../fleet/fleet-view.service';
import { PlacementRequest, ReservedResources, placementCandidates } from './placement-policy';

export type { PlacementRequest } from './placement-policy';

export interface PlacementCandidate {
  hostId: string;
  grpcAddress: string;
  proxyUrl: string;
}

/**
 * How a create's placement ended: on a host (`placed`), with no host able to take it (`no_host`), with every
 * candidate refusing it as full (`all_full`), or failed on a host for another reason (`failed`).
 */
export type PlacementResult = 'placed' | 'no_host' | 'all_full' | 'failed';

/**
 * Resources held on a host for one create. Released when the host call fails; once it succeeded, held until the
 * host's heartbeats show the sandbox (a heartbeat taken after the call ended), so the gap between a create and the
 * next heartbeat cannot overfill the host.
 */
export interface HostReservation {
  /** The host call failed: nothing was placed. */
  release(): void;
  /** The host call succeeded: held until the fleet view reports a heartbeat newer than now. */
  settle(): void;
}

/** Past this, a settled reservation is dropped even without a newer heartbeat (a monitor that stopped flushing). */
const SETTLED_HOLD_MAX_MS = 10_000;

interface Reservation extends ReservedResources {
  /** When the host call succeeded (epoch ms); undefined while it is in flight. */
  settledAt?: number;
}

/**
 * Chooses hosts for a sandbox from the fleet view (placement-policy.ts: ready hosts with room, best-of-K by locality
 * and free capacity) and keeps this replica's reservations, so concurrent creates on one replica never count the
 * same free room twice. Other replicas' creates show up through the hosts' heartbeats; a host that turns out full
 * answers RESOURCE_EXHAUSTED and the create falls through to its next candidate.
 */
@Injectable()
export class PlacementService {
  private readonly reservations = new Map<string, Set<Reservation>>();
  private readonly duration;
  private readonly results;

  constructor(
    private readonly env: SchedulerEnv,
    private readonly fleet: FleetViewService,
    metrics: MetricsRegistry,
  ) {
    this.duration = metrics.histogram('kiln_placement_duration_seconds', 'Time to choose the candidate hosts of one create', [], [
      0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05,
    ]);
    this.results = metrics.counter('kiln_placements_total', 'Sandbox placements by result', ['result']);
  }

  /** Ranked candidates for the request; `onlyHostId` limits them to one host (a named snapshot's). */
  candidates(request: PlacementRequest, options: { onlyHostId?: string } = {}): PlacementCandidate[] {
    const started = performance.now();
    const ranked = placementCandidates(this.fleet, request, {
      sampleSize: this.env.PLACEMENT_SAMPLE_SIZE,
      random: Math.random,
      reserved: (hostId) => this.reservedOn(hostId),
      onlyHostId: options.onlyHostId,
    });
    this.duration.observe((performance.now() - started) / 1000);
    return ranked.map(({ host }) => ({ hostId: host.hostId, grpcAddress: host.grpcAddress, proxyUrl: host.proxyUrl }));
  }

  reserve(hostId: string, resources: { vcpus: number; memoryMib: number; diskMib: number }): HostReservation {
    const reservation: Reservation = { vcpus: resources.vcpus, memoryMib: resources.memoryMib, diskMib: resources.diskMib, sandboxes: 1 };
    // Drops what the host's heartbeats cover by now, so a host placement stops sampling does not keep old entries.
    this.reservedOn(hostId);
    let held = this.reservations.get(hostId);
    if (!held) this.reservations.set(hostId, (held = new Set()));
    held.add(reservation);
    const onHost = held;
    return {
      release: () => {
        onHost.delete(reservation);
        if (onHost.size === 0 && this.reservations.get(hostId) === onHost) this.reservations.delete(hostId);
      },
      settle: () => {
        reservation.settledAt ??= Date.now();
      },
    };
  }

  recordResult(result: PlacementResult): void {
    this.results.inc({ result });
  }

  /** What this replica holds on a host; settled reservations the host's heartbeats now cover are dropped here. */
  reservedOn(hostId: string, now = Date.now()): ReservedResources | undefined {
    const held = this.reservations.get(hostId);
    if (!held) return undefined;
    const lastHeartbeat = Date.parse(this.fleet.get(hostId)?.lastHeartbeatAt ?? '');
    const total: ReservedResources = { vcpus: 0, memoryMib: 0, diskMib: 0, sandboxes: 0 };
    for (const reservation of held) {
      if (reservation.settledAt !== undefined && (lastHeartbeat > reservation.settledAt || now - reservation.settledAt > SETTLED_HOLD_MAX_MS)) {
        held.delete(reservation);
        continue;
      }
      total.vcpus += reservation.vcpus;
      total.memoryMib += reservation.memoryMib;
      total.diskMib += reservation.diskMib;
      total.sandboxes += reservation.sandboxes;
    }
    if (held.size === 0) {
      this.reservations.delete(hostId);
      return undefined;
    }
    return total;
  }
}
