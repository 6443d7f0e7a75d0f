import { Injectable } from '@nestjs/common';
import { HostState } from '@kiln/contracts';
import { PrismaService } from '../prisma.service';

export interface HostRegistrationRecord {
  hostId: string;
  address: string;
  proxyUrl: string;
  acceleration: string;
  version: string;
  vcpus: number;
  memoryMib: number;
  sandboxes: number;
  templates: string[];
  readyCloneTemplates: string[];
}

export interface HostUsageRecord {
  vcpus: number;
  memoryMib: number;
  sandboxes: number;
  templates: string[];
  readyCloneTemplates: string[];
}

@Injectable()
export class HostRepository {
  constructor(private readonly prisma: PrismaService) {}

  async register(record: HostRegistrationRecord): Promise<void> {
    const data = {
      address: record.address,
      proxyUrl: record.proxyUrl,
      acceleration: record.acceleration,
      version: record.version,
      vcpuCapacity: record.vcpus,
      memoryMibCapacity: record.memoryMib,
      sandboxCapacity: record.sandboxes,
      cachedTemplates: record.templates,
      readyCloneTemplates: record.readyCloneTemplates,
      state: HostState.Ready,
      lastHeartbeatAt: new Date(),
    };
    await this.prisma.host.upsert({ where: { id: record.hostId }, update: data, create: { id: record.hostId, ...data } });
  }

  /** Returns false for a host that never registered: heartbeats do not create hosts. */
  async heartbeat(hostId: string, usage: HostUsageRecord, at = new Date()): Promise<boolean> {
    const { count } = await this.prisma.host.updateMany({
      where: { id: hostId },
      data: {
        lastHeartbeatAt: at,
        vcpuUsed: usage.vcpus,
        memoryMibUsed: usage.memoryMib,
        sandboxCount: usage.sandboxes,
        cachedTemplates: usage.templates,
        readyCloneTemplates: usage.readyCloneTemplates,
        state: HostState.Ready,
      },
    });
    return count === 1;
  }

  /** Ready hosts whose heartbeat is younger than `ttlSeconds`. */
  fresh(ttlSeconds: number) {
    return this.prisma.host.findMany({
      where: { state: HostState.Ready, lastHeartbeatAt: { gte: new Date(Date.now() - ttlSeconds * 1000) } },
      orderBy: { id: 'asc' },
    });
  }

  get(hostId: string) {
    return this.prisma.host.findUnique({ where: { id: hostId } });
  }

  /** Marks hosts silent for longer than `ttlSeconds` unhealthy; returns their ids. */
  async markStale(ttlSeconds: number): Promise<string[]> {
    const stale = await this.prisma.host.findMany({
      where: { state: HostState.Ready, lastHeartbeatAt: { lt: new Date(Date.now() - ttlSeconds * 1000) } },
      select: { id: true },
    });
    if (stale.length) {
      await this.prisma.host.updateMany({ where: { id: { in: stale.map((h) => h.id) } }, data: { state: HostState.Unhealthy } });
    }
    return stale.map((h) => h.id);
  }
}
