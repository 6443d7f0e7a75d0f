import { Controller, Delete, Get, Param, Patch, Post } from '@nestjs/common';
import { ApiExcludeController } from '@nestjs/swagger';
import { AuthenticatedTeam, CallerTeam } from '../auth/authenticated-team';
import { SandboxesService } from '../sandboxes/sandboxes.service';
import { SandboxIdPipe } from '../validation/sandbox-id.pipe';
import { NOT_SUPPORTED_ROUTES, NotSupportedMethod, notSupported, toRouterPath } from './not-supported-routes';

const ROUTE_DECORATORS: Record<NotSupportedMethod, (path: string) => MethodDecorator> = { GET: Get, POST: Post, PATCH: Patch, DELETE: Delete };

/**
 * Every E2B route Kiln does not implement yet, answering 501 with the route's name. Left out of Kiln's OpenAPI
 * document, which describes what the gateway serves. Requests still need a valid API key, like any E2B route.
 */
@ApiExcludeController()
@Controller()
export class NotSupportedController {
  // Not private: the table-driven handlers below, defined outside the class body, look sandboxes up.
  constructor(readonly sandboxes: SandboxesService) {}}

// One handler per table row, registered like any decorated method (so the API-key guard and the error filter apply).
// A row about one sandbox first looks the sandbox up, so a missing or another team's sandbox stays 404 (the SDK's
// SandboxNotFoundError), as on every sandbox route.
for (const [index, route] of NOT_SUPPORTED_ROUTES.entries()) {
  const name = `notSupported${index}`;
  const aboutOneSandbox = route.path.includes('{sandboxID}');
  Object.defineProperty(NotSupportedController.prototype, name, {
    value: aboutOneSandbox
      ? async function answerNotSupportedForSandbox(this: NotSupportedController, team: AuthenticatedTeam, sandboxId: string): Promise<never> {
          await this.sandboxes.get(team.teamId, sandboxId);
          throw notSupported(route);
        }
      : function answerNotSupported(): never {
          throw notSupported(route);
        },
    configurable: true,
    writable: true,
  });
  if (aboutOneSandbox) {
    CallerTeam()(NotSupportedController.prototype, name, 0);
    Param('sandboxID', SandboxIdPipe)(NotSupportedController.prototype, name, 1);
  }
  const descriptor = Object.getOwnPropertyDescriptor(NotSupportedController.prototype, name) as PropertyDescriptor;
  ROUTE_DECORATORS[route.method](toRouterPath(route.path))(NotSupportedController.prototype, name, descriptor);
}
