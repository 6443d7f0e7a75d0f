import { Inject, Injectable } from '@nestjs/common';
import { HostAgentEnv } from '@kiln/config';
import { Acceleration, HostInfoResponse } from '@kiln/proto/hostagent';
import { NetworkSlotPool } from '../network';
import { SandboxManager } from '../sandbox/sandbox-manager.service';
import { SNAPSHOT_SOURCE, SnapshotSource } from '../sandbox/snapshot-source';

export type Accelerator = 'kvm' | 'tcg';

/** Where the host's VMM acceleration choice comes from (a real probe, run once per host). */
export interface AcceleratorSource {
  accelerator(): Promise<Accelerator>;
}

export const ACCELERATOR_SOURCE = Symbol('ACCELERATOR_SOURCE');

export const HOST_AGENT_VERSION = '0.1.0';

@Injectable()
export class HostInfoService {
  constructor(
    private readonly env: HostAgentEnv,
    private readonly sandboxes: SandboxManager,
    private readonly slots: NetworkSlotPool,
    @Inject(SNAPSHOT_SOURCE) private readonly snapshots: SnapshotSource,
    @Inject(ACCELERATOR_SOURCE) private readonly accelerators: AcceleratorSource,
  ) {}

  get proxyUrl(): string {
    return `http://${this.env.KILN_HOST_ADDRESS}:${this.env.PROXY_PORT}`;
  }

  get grpcAddress(): string {
    return `${this.env.KILN_HOST_ADDRESS}:${this.env.GRPC_PORT}`;
  }

  async describe(): Promise<HostInfoResponse> {
    const [accelerator, templates] = await Promise.all([this.accelerators.accelerator(), this.snapshots.cached()]);
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
