import { Body, Controller, Delete, Get, HttpCode, Param, Patch, Post } from '@nestjs/common';
import { ApiExcludeController } from '@nestjs/swagger';
import { ResumeSandboxDto } from '@kiln/contracts';
import { AuthenticatedTeam, CallerTeam } from '../auth/authenticated-team';
import { PauseSandboxDto } from '../sandboxes/sandbox-request.dto';
import { SandboxesService } from '../sandboxes/sandboxes.service';
import { PayloadPipe } from '../validation/payload.pipe';
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
  // Not private: the table-driven handlers below, defined outside the class body, look sandboxes up too.
  constructor(readonly sandboxes: SandboxesService) {}

  /** Was 409, which the SDK's pause() reads as "already paused" and returns false. A missing sandbox stays 404. */
  @Post('sandboxes/:sandboxID/pause')
  @HttpCode(204)
  async pause(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Body(new PayloadPipe(PauseSandboxDto, { optional: true })) _body: PauseSandboxDto,
  ): Promise<void> {
    await this.sandboxes.get(team.teamId, sandboxId);
    throw notSupported({ method: 'POST', path: '/sandboxes/{sandboxID}/pause', feature: 'pausing a sandbox' });
  }

  /** Resuming needs pause; a missing sandbox stays 404. */
  @Post('sandboxes/:sandboxID/resume')
  @HttpCode(201)
  async resume(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Body(new PayloadPipe(ResumeSandboxDto, { optional: true })) _body: ResumeSandboxDto,
  ): Promise<void> {
    await this.sandboxes.get(team.teamId, sandboxId);
    throw notSupported({ method: 'POST', path: '/sandboxes/{sandboxID}/resume', feature: 'resuming a paused sandbox' });
  }
}

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
