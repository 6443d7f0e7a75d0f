import { Injectable } from '@nestjs/common';
import { SchedulerEnv } from '@kiln/config';
import { HostRepository, SandboxRepository } from '@kiln/db';

export interface PlacementRequest {
  templateId: string;
  vcpus: number;
  memoryMib: number;
}

export interface PlacementCandidate {
  hostId: string;
  grpcAddress: string;
  proxyUrl: string;
}

/**
 * Chooses hosts for a sandbox: registered, fresh, with room for its vcpus and memory.
 * Hosts with a restored clone of the template waiting come first (the create skips the
 * restore), then hosts that cache the template, then the least loaded. Returns an ordered
 * list so the caller can fall through when a host turns out to be full.
 */
@Injectable()
export class PlacementService {
  constructor(
    private readonly env: SchedulerEnv,
    private readonly hosts: HostRepository,
    private readonly sandboxes: SandboxRepository,
  ) {}

  async candidates(request: PlacementRequest): Promise<PlacementCandidate[]> {
    const [fresh, usage] = await Promise.all([this.hosts.fresh(this.env.HOST_HEARTBEAT_TTL_SECONDS), this.sandboxes.usageByHost()]);
    return fresh
      .map((host) => {
        const used = usage.get(host.id) ?? { vcpus: 0, memoryMib: 0, sandboxes: 0 };
        return {
          host,
          freeVcpus: host.vcpuCapacity - used.vcpus,
          freeMemory: host.memoryMibCapacity - used.memoryMib,
          freeSlots: host.sandboxCapacity - used.sandboxes,
          load: host.memoryMibCapacity > 0 ? used.memoryMib / host.memoryMibCapacity : 1,
          cached: host.cachedTemplates.includes(request.templateId),
          cloneReady: host.readyCloneTemplates.includes(request.templateId),
        };
      })
      .filter((h) => h.freeVcpus >= request.vcpus && h.freeMemory >= request.memoryMib && h.freeSlots >= 1)
      .sort(
        (a, b) =>
          Number(b.cloneReady) - Number(a.cloneReady) || Number(b.cached) - Number(a.cached) || a.load - b.load || a.host.id.localeCompare(b.host.id),
      )
      .map(({ host }) => ({ hostId: host.id, grpcAddress: host.address, proxyUrl: host.proxyUrl }));
  }
}
