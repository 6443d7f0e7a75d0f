import { createHash, timingSafeEqual } from 'node:crypto';
import { CanActivate, ExecutionContext, Injectable } from '@nestjs/common';
import { GatewayEnv } from '@kiln/config';
import type { FastifyRequest } from 'fastify';
import { UnauthenticatedRequestThrottle } from '../rate-limit/unauthenticated-request-throttle';
import { AdminApiDisabledError, AdminTokenRejectedError } from './admin.errors';

/**
 * E2B's AdminApiKeyAuth: admin routes need `X-Admin-Token` equal to KILN_ADMIN_TOKEN. Without a configured token the
 * admin API is disabled (403), so a deployment that never chose one has no fleet control exposed. A missing or wrong
 * token counts against the client address's budget of unauthenticated requests, like a bad API key.
 */
@Injectable()
export class AdminTokenGuard implements CanActivate {
  /** The digest of the configured token: comparing digests keeps the comparison constant-time whatever the length. */
  private readonly expectedDigest?: Buffer;

  constructor(
    env: GatewayEnv,
    private readonly unauthenticated: UnauthenticatedRequestThrottle,
  ) {
    this.expectedDigest = env.KILN_ADMIN_TOKEN ? digestOf(env.KILN_ADMIN_TOKEN) : undefined;
  }

  async canActivate(context: ExecutionContext): Promise<boolean> {
    if (!this.expectedDigest) throw new AdminApiDisabledError();
    const request = context.switchToHttp().getRequest<FastifyRequest>();
    this.unauthenticated.refuseIfOverBudget(request.ip);
    const header = request.headers['x-admin-token'];
    const presented = (Array.isArray(header) ? header[0] : header)?.trim();
    if (presented && timingSafeEqual(digestOf(presented), this.expectedDigest)) return true;
    await this.unauthenticated.countFailure(request.ip);
    throw new AdminTokenRejectedError(!presented);
  }
}

function digestOf(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}
