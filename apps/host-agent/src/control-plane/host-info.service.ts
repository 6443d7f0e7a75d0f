import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { Injectable } from '@nestjs/common';
import { HostAgentEnv } from '@kiln/config';
import { internalTlsFilesOf } from '@kiln/config/internal-tls';
import { Acceleration, HostInfoResponse } from '@kiln/proto/hostagent';
import { ClonePool } from '../clone-pool';
import { NetworkSlotPool } from '../network';
import { SandboxManager } from '../sandbox/sandbox-manager.service';
import { TemplateStore } from '../template';
import { AccelerationProbe } from '../vmm';

export interface CachedTemplate {
  templateId: string;
  buildId: string;
  snapshotReady: boolean;
  vcpus: number;
  memoryMib: number;
  /** Paused clones of this build waiting in the pool: a create here skips the restore. */
  readyClones: number;
}

export const HOST_AGENT_VERSION = '0.1.0';

@Injectable()
export class HostInfoService {
  constructor(
    private readonly env: HostAgentEnv,
    private readonly sandboxes: SandboxManager,
    private readonly slots: NetworkSlotPool,
    private readonly templates: TemplateStore,
    private readonly acceleration: AccelerationProbe,
    private readonly clones: ClonePool,
  ) {}

  /** Templates whose current build is on this host; placement prefers hosts with a clone ready, then a snapshot. */
  async cachedTemplates(): Promise<CachedTemplate[]> {
    const pooled = new Map(this.clones.describe().map((p) => [`${p.templateId}/${p.buildId}`, p.clones.length]));
    // A snapshot on disk that failed to load (and is being retried) is not one a create can use.
    const notReady = new Set(this.sandboxes.templateSnapshots().filter((s) => s.state !== 'ready').map((s) => `${s.templateId}/${s.buildId}`));
    const cached: CachedTemplate[] = [];
    for (const summary of await this.templates.list()) {
      if (!summary.currentBuildId) continue;
      const build = await this.templates.resolve(summary.templateId).catch(() => undefined);
      if (!build) continue;
      const snapshotReady =
        !notReady.has(`${build.templateId}/${build.buildId}`) && (await access(join(build.snapshotDir, 'manifest.json')).then(() => true, () => false));
      cached.push({
        templateId: build.templateId,
        buildId: build.buildId,
        snapshotReady,
        vcpus: build.vcpus,
        memoryMib: build.memoryMib,
        readyClones: pooled.get(`${build.templateId}/${build.buildId}`) ?? 0,
      });
    }
    return cached;
  }

  /** https when the proxy speaks internal mTLS (the gateway then presents its certificate), as it must in production. */
  get proxyUrl(): string {
    return `${internalTlsFilesOf(this.env) ? 'https' : 'http'}://${this.env.KILN_HOST_ADDRESS}:${this.env.PROXY_PORT}`;
  }

  get grpcAddress(): string {
    return `${this.env.KILN_HOST_ADDRESS}:${this.env.GRPC_PORT}`;
  }

  async describe(): Promise<HostInfoResponse> {
    const [accelerator, templates] = await Promise.all([this.acceleration.accelerator(), this.cachedTemplates()]);
    const usage = this.sandboxes.usage();
    const capacity = this.sandboxes.capacity;
    const slotStats = this.slots.stats();
    return {
      hostId: this.sandboxes.hostId,
      version: HOST_AGENT_VERSION,
      acceleration: accelerator === 'kvm' ? Acceleration.ACCELERATION_KVM : Acceleration.ACCELERATION_TCG,
      capacity: { ...capacity, networkSlots: slotStats.maxSlots },
      usage: { ...usage, networkSlots: slotStats.leased },
      templates: templates.map((t) => ({ ...t })),
      proxyUrl: this.proxyUrl,
    };
  }
}
