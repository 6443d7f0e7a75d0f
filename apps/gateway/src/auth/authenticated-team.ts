import { ExecutionContext, createParamDecorator } from '@nestjs/common';
import type { AuthenticatedTeam } from '@kiln/db';
import type { FastifyRequest } from 'fastify';

export type { AuthenticatedTeam };

/** The request after the API-key guard: who is calling. */
export interface AuthenticatedRequest extends FastifyRequest {
  team?: AuthenticatedTeam;
}

/** Injects the caller's team, set by ApiKeyGuard; every sandbox and template query is scoped by it. */
export const CallerTeam = createParamDecorator((_data: unknown, context: ExecutionContext): AuthenticatedTeam => {
  const team = context.switchToHttp().getRequest<AuthenticatedRequest>().team;
  if (!team) throw new Error('CallerTeam used on a route the API-key guard does not protect');
  return team;
});
