import { Injectable } from '@nestjs/common';
import { HostRepository } from '@kiln/db';
import { BuildHost } from './build-host-client';
import { BuildInfrastructureError } from './template-build.errors';

export interface BuildPlacement {
  /** The host that built the template's previous build: its step cache makes an unchanged prefix free. */
  previousBuildHostId?: string;
  /** The base template (fromTemplate): a host that holds it needs no fetch. */
  baseTemplateId?: string;
  memoryMib: number;
}

/**
 * Picks the host a build runs on among the hosts the host monitor holds `ready` (draining, cordoned, unhealthy and
 * dead hosts get no builds): among those with memory for the build VM, the one with the template's step cache
 * first, then one that holds the base, then the one with the most free memory. The row's usage and templates are
 * the ones of the host's registration (the monitor keeps live usage in its KV view, not the row), so memory is a
 * tie-breaker, not a promise: a host that turns out full fails the build's host call, which is retried. No ready
 * host is an infrastructure failure (the job is retried: a host may be restarting).
 */
@Injectable()
export class BuildHostPicker {
  constructor(private readonly hosts: HostRepository) {}

  async pick(placement: BuildPlacement): Promise<BuildHost> {
    const ready = await this.hosts.ready();
    if (!ready.length) throw new BuildInfrastructureError('no host is available to run the build (none is ready)');
    const free = (h: (typeof ready)[number]) => h.memoryMibCapacity - h.memoryMibUsed;
    const score = (h: (typeof ready)[number]) =>
      (free(h) >= placement.memoryMib ? 4 : 0) +
      (h.id === placement.previousBuildHostId ? 2 : 0) +
      (placement.baseTemplateId && h.cachedTemplates.includes(placement.baseTemplateId) ? 1 : 0);
    const [best] = [...ready].sort((a, b) => score(b) - score(a) || free(b) - free(a) || a.id.localeCompare(b.id));
    return { id: best.id, address: best.address };
  }
}
