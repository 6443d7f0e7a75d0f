import { CanActivate, ExecutionContext, Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { HealthController, MetricsController } from '@kiln/telemetry';
import { UnauthenticatedRequestThrottle } from '../rate-limit/unauthenticated-request-throttle';
import { ApiKeyAuthenticator } from './api-key-authenticator';
import { AuthenticatedRequest } from './authenticated-team';
import { PUBLIC_ROUTE } from './public-route.decorator';

/** Probes and scrapers must work without a key; these controllers come from @kiln/telemetry. */
const PUBLIC_CONTROLLERS: ReadonlySet<unknown> = new Set([HealthController, MetricsController]);

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** E2B clients send `X-API-Key`; `Authorization: Bearer <key>` is accepted too (E2B's CLI style). */
export function presentedApiKey(headers: AuthenticatedRequest['headers']): string | undefined {
  const apiKey = headerValue(headers['x-api-key'])?.trim();
  if (apiKey) return apiKey;
  const authorization = headerValue(headers.authorization)?.trim();
  const bearer = authorization && /^Bearer\s+(\S+)$/i.exec(authorization)?.[1];
  return bearer || undefined;
}

/** Every route needs a valid API key unless marked public; the key decides the team all queries are scoped to. */
@Injectable()
export class ApiKeyGuard implements CanActivate {
  constructor(
    private readonly reflector: Reflector,
    private readonly authenticator: ApiKeyAuthenticator,
    private readonly unauthenticated: UnauthenticatedRequestThrottle,
  ) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    if (context.getType() !== 'http') return true;
    if (PUBLIC_CONTROLLERS.has(context.getClass())) return true;
    if (this.reflector.getAllAndOverride<boolean>(PUBLIC_ROUTE, [context.getHandler(), context.getClass()])) return true;

    const request = context.switchToHttp().getRequest<AuthenticatedRequest>();
    // Requests without a valid key have a budget per client address; one over it is refused before any lookup.
    this.unauthenticated.refuseIfOverBudget(request.ip);
    const key = presentedApiKey(request.headers);
    if (!key) {
      await this.unauthenticated.countFailure(request.ip);
      throw new KilnError(ErrorCode.Unauthenticated, 'missing API key: send it in the X-API-Key header');
    }
    const team = await this.authenticator.authenticate(key);
    if (!team) {
      await this.unauthenticated.countFailure(request.ip);
      throw new KilnError(ErrorCode.Unauthenticated, 'invalid API key');
    }
    request.team = team;
    return true;
  }
}
