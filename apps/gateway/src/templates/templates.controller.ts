import { Controller, Delete, Get, HttpCode, Param, Query, Res } from '@nestjs/common';
import { ApiNoContentResponse, ApiOkResponse, ApiOperation, ApiQuery, ApiSecurity, ApiTags } from '@nestjs/swagger';
import type { FastifyReply } from 'fastify';
import { KilnError, TEMPLATE_REF_PATTERN } from '@kiln/contracts';
import { AuthenticatedTeam, CallerTeam } from '../auth/authenticated-team';
import { PayloadPipe } from '../validation/payload.pipe';
import { TemplateBuildsQueryDto } from './template-request.dto';
import { TemplateAliasBody, TemplateBody, TemplateWithBuildsBody } from './template-responses';
import { TemplatesService } from './templates.service';
import { SandboxesService } from '../sandboxes/sandboxes.service';
import { TemplateBuildsService } from './template-builds.service';

@ApiTags('templates')
@ApiSecurity('ApiKeyAuth')
@Controller('templates')
export class TemplatesController {
  constructor(
    private readonly templates: TemplatesService,
    private readonly sandboxes: SandboxesService,
    private readonly builds: TemplateBuildsService,
  ) {}

  @Get()
  @ApiQuery({ name: 'teamID', required: false, description: "Must be the caller's team when given" })
  @ApiOkResponse({ type: [TemplateBody] })
  list(@CallerTeam() team: AuthenticatedTeam, @Query('teamID') teamId?: unknown): Promise<TemplateBody[]> {
    // E2B lets dashboard users pick a team; an API key belongs to exactly one, so any other team is not found.
    if (teamId !== undefined && teamId !== team.teamId) throw KilnError.notFound(`team ${String(teamId)}`);
    return this.templates.list(team.teamId);
  }

  @Get(':templateID')
  @ApiQuery({ name: 'limit', required: false, type: Number, description: 'Builds per page, 1-100, default 100' })
  @ApiQuery({ name: 'nextToken', required: false, type: String, description: 'The x-next-token header of the previous page' })
  @ApiOkResponse({ type: TemplateWithBuildsBody })
  async get(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('templateID') templateId: string,
    @Query(new PayloadPipe(TemplateBuildsQueryDto)) query: TemplateBuildsQueryDto,
    @Res({ passthrough: true }) reply: FastifyReply,
  ): Promise<TemplateWithBuildsBody> {
    if (templateId.length > 128 || !TEMPLATE_REF_PATTERN.test(templateId) || templateId.includes(':')) {
      throw KilnError.invalid('templateID must be a template id or alias');
    }
    const page = await this.templates.getWithBuilds(team.teamId, templateId, query);
    if (page.nextToken) reply.header('x-next-token', page.nextToken);
    return page.template;
  }

  /** 404: no template has the name; 403: another team's (the SDK's `Template.exists` reads it as "taken"). */
  @Get('aliases/:alias')
  @ApiOkResponse({ type: TemplateAliasBody })
  byAlias(@CallerTeam() team: AuthenticatedTeam, @Param('alias') alias: string): Promise<TemplateAliasBody> {
    if (alias.length > 128 || !TEMPLATE_REF_PATTERN.test(alias)) throw KilnError.invalid('alias must be a template alias');
    return this.templates.byAlias(team.teamId, alias);
  }

  /**
   * A built template of the team (by id or name) is deleted with its builds, tags and built files, its unfinished
   * builds cancelled (409 while a sandbox or snapshot uses it). A snapshot (what `Sandbox.deleteSnapshot` calls,
   * by id or name with its tag) is deleted with its artifacts. 404 when the team has neither by that reference;
   * a public platform template is 403.
   */
  @Delete(':templateID')
  @HttpCode(204)
  @ApiOperation({ summary: 'Delete a template or a snapshot' })
  @ApiNoContentResponse({ description: 'The template (or snapshot) and its artifacts are deleted' })
  async delete(@CallerTeam() team: AuthenticatedTeam, @Param('templateID') templateId: string): Promise<void> {
    if (templateId.length > 200 || !TEMPLATE_REF_PATTERN.test(templateId)) throw KilnError.invalid('templateID must be a template or snapshot id or name');
    if (await this.builds.deleteTemplate(team.teamId, templateId)) return;
    await this.builds.refusePublicDelete(team.teamId, templateId);
    const deleted = await this.sandboxes.deleteSnapshot(team.teamId, templateId);
    // Visible but neither the team's template nor its snapshot: nothing it may delete.
    if (!deleted) throw KilnError.notFound(`template ${templateId}`);
  }
}
