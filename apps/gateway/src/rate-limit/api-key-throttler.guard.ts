import { ExecutionContext, Injectable } from '@nestjs/common';
import { ThrottlerGuard } from '@nestjs/throttler';
import { AuthenticatedRequest } from '../auth/authenticated-team';

/**
 * One request budget per API key across all routes (the stock guard keys by
 * route and client IP). Runs after ApiKeyGuard; public routes fall back to the IP.
 */
@Injectable()
export class ApiKeyThrottlerGuard extends ThrottlerGuard {
  protected override async getTracker(req: AuthenticatedRequest): Promise<string> {
    return req.team ? `key:${req.team.apiKeyId}` : `ip:${req.ip}`;
  }

  protected override generateKey(_context: ExecutionContext, tracker: string, throttlerName: string): string {
    return `${throttlerName}:${tracker}`;
  }

  protected override async getErrorMessage(): Promise<string> {
    const limit = this.throttlers[0]?.limit;
    return `rate limit exceeded${typeof limit === 'number' ? `: at most ${limit} requests per minute per API key` : ''}`;
  }
}
