import { Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { HostMonitorEnv } from '@kiln/config';
import { HostRepository } from '@kiln/db';
import { HostHeartbeat } from '@kiln/messaging';
import { MetricsRegistry } from '@kiln/telemetry';

/**
 * Watches heartbeats and turns silence into state: a host that stops beating is
 * marked unhealthy so the scheduler stops placing on it.
 */
@Injectable()
export class HostLivenessService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(HostLivenessService.name);
  private readonly lastSeen = new Map<string, number>();
  private sweepTimer?: NodeJS.Timeout;
  private readonly heartbeats;
  private readonly sandboxes;
  private readonly staleHosts;

  constructor(
    private readonly env: HostMonitorEnv,
    private readonly hosts: HostRepository,
    metrics: MetricsRegistry,
  ) {
    this.heartbeats = metrics.counter('kiln_host_heartbeats_total', 'Heartbeats received', ['host']);
    this.sandboxes = metrics.gauge('kiln_host_sandboxes', 'Live sandboxes reported by each host', ['host']);
    this.staleHosts = metrics.counter('kiln_host_marked_unhealthy_total', 'Hosts marked unhealthy for silence');
  }

  onModuleInit(): void {
    const periodMs = Math.max(1_000, (this.env.HOST_HEARTBEAT_TTL_SECONDS * 1000) / 3);
    this.sweepTimer = setInterval(() => void this.sweep(), periodMs);
    this.sweepTimer.unref();
  }

  onApplicationShutdown(): void {
    clearInterval(this.sweepTimer);
  }

  record(heartbeat: HostHeartbeat): void {
    this.lastSeen.set(heartbeat.hostId, Date.now());
    this.heartbeats.inc({ host: heartbeat.hostId });
    this.sandboxes.set({ host: heartbeat.hostId }, heartbeat.usage.sandboxes);
  }

  lastSeenAt(hostId: string): number | undefined {
    return this.lastSeen.get(hostId);
  }

  async sweep(): Promise<string[]> {
    try {
      const stale = await this.hosts.markStale(this.env.HOST_HEARTBEAT_TTL_SECONDS);
      for (const hostId of stale) {
        this.logger.warn(`host ${hostId} missed heartbeats for ${this.env.HOST_HEARTBEAT_TTL_SECONDS}s; marked unhealthy`);
        this.staleHosts.inc();
      }
      return stale;
    } catch (error) {
      this.logger.error(`stale-host sweep failed: ${String(error)}`);
      return [];
    }
  }
}
