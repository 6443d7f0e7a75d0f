import { Injectable } from '@nestjs/common';
import { ErrorCode, KilnError, SandboxRoute } from '@kiln/contracts';
import { SandboxRouteCache } from '../traffic/sandbox-route.cache';
import { HostProxyConnections } from '../traffic/host-proxy-connections';
import { ENVD_PORT, SANDBOX_ID_HEADER, SANDBOX_PORT_HEADER } from '../traffic/sandbox-address';
import { SandboxMetricBody } from './sandbox-responses';

const GUEST_METRICS_TIMEOUT_MS = 5_000;

/** envd's `/metrics` body (snake_case, bytes). */
interface GuestMetrics {
  ts?: number;
  cpu_count?: number;
  cpu_used_pct?: number;
  mem_total?: number;
  mem_used?: number;
  mem_cache?: number;
  disk_used?: number;
  disk_total?: number;
}

function numberOr(value: unknown, fallback: number): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : fallback;
}

export function toSandboxMetric(metrics: GuestMetrics, now = Date.now()): SandboxMetricBody {
  const unix = Math.round(numberOr(metrics.ts, now / 1000));
  return {
    timestamp: new Date(unix * 1000).toISOString(),
    timestampUnix: unix,
    cpuCount: numberOr(metrics.cpu_count, 0),
    cpuUsedPct: numberOr(metrics.cpu_used_pct, 0),
    memUsed: numberOr(metrics.mem_used, 0),
    memTotal: numberOr(metrics.mem_total, 0),
    memCache: numberOr(metrics.mem_cache, 0),
    diskUsed: numberOr(metrics.disk_used, 0),
    diskTotal: numberOr(metrics.disk_total, 0),
  };
}

/**
 * Reads a sandbox's current resource usage from its guest agent (envd `/metrics`),
 * through the owning host agent's proxy like any other sandbox traffic.
 */
@Injectable()
export class GuestMetricsClient {
  constructor(
    private readonly routes: SandboxRouteCache,
    private readonly hosts: HostProxyConnections,
  ) {}

  async sample(route: SandboxRoute): Promise<SandboxMetricBody> {
    const headers: Record<string, string> = {
      [SANDBOX_ID_HEADER]: route.sandboxId,
      [SANDBOX_PORT_HEADER]: String(ENVD_PORT),
    };
    if (route.envdAccessToken) headers['x-access-token'] = route.envdAccessToken;
    let response: Awaited<ReturnType<HostProxyConnections['fetch']>>;
    try {
      response = await this.hosts.fetch(new URL('/metrics', route.proxyUrl), { headers, signal: AbortSignal.timeout(GUEST_METRICS_TIMEOUT_MS) });
    } catch (error) {
      this.routes.invalidate(route.sandboxId);
      throw new KilnError(ErrorCode.Unavailable, `metrics of sandbox ${route.sandboxId} are unavailable: ${error instanceof Error ? error.message : String(error)}`);
    }
    if (!response.ok) {
      await response.body?.cancel();
      if (response.status === 502) this.routes.invalidate(route.sandboxId);
      throw new KilnError(ErrorCode.Unavailable, `metrics of sandbox ${route.sandboxId} are unavailable: guest answered ${response.status}`);
    }
    const body = (await response.json().catch(() => undefined)) as GuestMetrics | undefined;
    if (typeof body !== 'object' || body === null) {
      throw new KilnError(ErrorCode.Unavailable, `metrics of sandbox ${route.sandboxId} are unavailable: guest sent no JSON`);
    }
    return toSandboxMetric(body);
  }
}
