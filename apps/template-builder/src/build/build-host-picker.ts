import { Injectable } from '@nestjs/common';
import { TemplateBuilderEnv } from '@kiln/config';
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
 * Picks the host a build runs on among the registered hosts with a fresh heartbeat: among those with memory for the
 * build VM, the one with the template's step cache first, then one that holds the base, then the one with the most
 * free memory. No fresh host is an
 * infrastructure failure (the job is retried: a host may be restarting).
 */
@Injectable()
export class BuildHostPicker {
  constructor(
    private readonly env: TemplateBuilderEnv,
    private readonly hosts: HostRepository,
  ) {}

  async pick(placement: BuildPlacement): Promise<BuildHost> {
    const fresh = await this.hosts.fresh(this.env.HOST_HEARTBEAT_TTL_SECONDS);
    if (!fresh.length) throw new BuildInfrastructureError('no host is available to run the build (none registered with a fresh heartbeat)');
    const free = (h: (typeof fresh)[number]) => h.memoryMibCapacity - h.memoryMibUsed;
    const score = (h: (typeof fresh)[number]) =>
      (free(h) >= placement.memoryMib ? 4 : 0) +
      (h.id === placement.previousBuildHostId ? 2 : 0) +
      (placement.baseTemplateId && h.cachedTemplates.includes(placement.baseTemplateId) ? 1 : 0);
    const [best] = [...fresh].sort((a, b) => score(b) - score(a) || free(b) - free(a) || a.id.localeCompare(b.id));
    return { id: best.id, address: best.address };
  }
}
