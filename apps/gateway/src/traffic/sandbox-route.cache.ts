import { Injectable } from '@nestjs/common';
import { GatewayEnv } from '@kiln/config';
import { SandboxRoute, SandboxState } from '@kiln/contracts';
import { MessagingClient, Subjects } from '@kiln/messaging';
import { MetricsRegistry } from '@kiln/telemetry';

/** Long enough to absorb a burst of envd calls, short enough that a moved or killed sandbox is noticed soon. */
export const ROUTE_TTL_MS = 5_000;
/** A route lookup is a scheduler read; it should never take the request timeout of a create. */
const ROUTE_LOOKUP_TIMEOUT_MS = 5_000;
const MAX_CACHED_ROUTES = 50_000;

/**
 * Where a sandbox's traffic goes, asked of the scheduler and kept in memory for
 * ROUTE_TTL_MS. Only running sandboxes are cached (a paused one may be resumed any
 * moment); concurrent misses for one sandbox share one lookup; callers drop an entry
 * as soon as forwarding to it fails, so a stale route costs one failed request.
 */
@Injectable()
export class SandboxRouteCache {
  private readonly routes = new Map<string, { route: SandboxRoute; expiresAt: number }>();
  private readonly lookups = new Map<string, Promise<SandboxRoute>>();
  private readonly resumes = new Map<string, Promise<SandboxRoute>>();
  private lookupCount = 0;
  private readonly lookupSeconds;

  constructor(
    private readonly messaging: MessagingClient,
    private readonly env: GatewayEnv,
    metrics: MetricsRegistry,
  ) {
    this.lookupSeconds = metrics.histogram('kiln_gateway_route_lookup_seconds', 'Scheduler route lookups (cache misses) by outcome', ['outcome'], [
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5,
    ]);
  }

  /** Scheduler lookups made so far (cache misses); exposed for metrics and tests. */
  get lookupsMade(): number {
    return this.lookupCount;
  }

  async resolve(sandboxId: string): Promise<SandboxRoute> {
    const cached = this.routes.get(sandboxId);
    if (cached && cached.expiresAt > Date.now()) return cached.route;
    const pending = this.lookups.get(sandboxId);
    if (pending) return pending;
    const isCurrent = () => this.lookups.get(sandboxId) === lookup;
    const lookup: Promise<SandboxRoute> = this.lookup(sandboxId, isCurrent).finally(() => {
      if (isCurrent()) this.lookups.delete(sandboxId);
    });
    this.lookups.set(sandboxId, lookup);
    return lookup;
  }

  /**
   * Traffic for a paused sandbox with autoResume: asks the scheduler to resume it and answers its route once it runs.
   * Every request that arrives meanwhile waits on the same call (the scheduler also lets only one resume reach the
   * host); bounded by the create budget, after which the request is refused, never left hanging.
   */
  resumeForTraffic(sandboxId: string): Promise<SandboxRoute> {
    const pending = this.resumes.get(sandboxId);
    if (pending) return pending;
    const resume = this.messaging
      .request(Subjects.sandboxAutoResume, { sandboxId }, this.env.SANDBOX_CREATE_TIMEOUT_MS)
      .then((route) => {
        this.invalidate(sandboxId);
        if (route.state === SandboxState.Running) this.routes.set(sandboxId, { route, expiresAt: Date.now() + ROUTE_TTL_MS });
        return route;
      })
      .finally(() => this.resumes.delete(sandboxId));
    this.resumes.set(sandboxId, resume);
    return resume;
  }

  /**
   * Forgets the sandbox's route, and any lookup in flight for it: that lookup's answer may predate what made the
   * caller drop the route (a kill, a move), so it is not cached and the next resolve asks again.
   */
  invalidate(sandboxId: string): void {
    this.routes.delete(sandboxId);
    this.lookups.delete(sandboxId);
  }

  private async lookup(sandboxId: string, isCurrent: () => boolean): Promise<SandboxRoute> {
    this.lookupCount++;
    const timeout = Math.min(ROUTE_LOOKUP_TIMEOUT_MS, this.env.NATS_REQUEST_TIMEOUT_MS);
    const stopTimer = this.lookupSeconds.startTimer();
    let route: SandboxRoute;
    try {
      route = await this.messaging.request(Subjects.sandboxRoute, { sandboxId }, timeout);
      stopTimer({ outcome: 'ok' });
    } catch (error) {
      stopTimer({ outcome: 'error' });
      throw error;
    }
    if (!isCurrent()) return route;
    if (route.state === SandboxState.Running) {
      if (this.routes.size >= MAX_CACHED_ROUTES) this.evictExpired();
      this.routes.set(sandboxId, { route, expiresAt: Date.now() + ROUTE_TTL_MS });
    } else {
      this.routes.delete(sandboxId);
    }
    return route;
  }

  private evictExpired(): void {
    const now = Date.now();
    for (const [id, entry] of this.routes) if (entry.expiresAt <= now) this.routes.delete(id);
    if (this.routes.size >= MAX_CACHED_ROUTES) this.routes.clear();
  }
}
