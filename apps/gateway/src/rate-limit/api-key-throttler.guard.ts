import { ExecutionContext, Injectable } from '@nestjs/common';
import { ThrottlerGuard, ThrottlerRequest } from '@nestjs/throttler';
import { HealthController, MetricsController } from '@kiln/telemetry';
import { AuthenticatedRequest } from '../auth/authenticated-team';
import { RateLimitUnavailableError } from './rate-limit.errors';

/** Probes and scrapers: counted like any public route, but served while the limiter's Redis is down (that is when they matter). */
const TELEMETRY_CONTROLLERS: ReadonlySet<unknown> = new Set([HealthController, MetricsController]);

/**
 * One request budget per API key across all routes (the stock guard keys by
 * route and client IP). Runs after ApiKeyGuard; public routes fall back to the
 * client address (request.ip: X-Forwarded-For only behind TRUSTED_PROXIES).
 */
@Injectable()
export class ApiKeyThrottlerGuard extends ThrottlerGuard {
  protected override async getTracker(req: AuthenticatedRequest): Promise<string> {
    return req.team ? `key:${req.team.apiKeyId}` : `ip:${req.ip}`;
  }

  protected override async handleRequest(request: ThrottlerRequest): Promise<boolean> {
    try {
      return await super.handleRequest(request);
    } catch (error) {
      if (error instanceof RateLimitUnavailableError && TELEMETRY_CONTROLLERS.has(request.context.getClass())) return true;
      throw error;
    }
  }

  protected override generateKey(_context: ExecutionContext, tracker: string, throttlerName: string): string {
    return `${throttlerName}:${tracker}`;
  }

  protected override async getErrorMessage(): Promise<string> {
    const limit = this.throttlers[0]?.limit;
    return `rate limit exceeded${typeof limit === 'number' ? `: at most ${limit} requests per minute per API key` : ''}`;
  }
}
