import { Controller, Get, Param, Query } from '@nestjs/common';
import { ApiOkResponse, ApiQuery, ApiSecurity, ApiTags } from '@nestjs/swagger';
import { KilnError, TEMPLATE_REF_PATTERN } from '@kiln/contracts';
import { AuthenticatedTeam, CallerTeam } from '../auth/authenticated-team';
import { TemplateAliasBody, TemplateBody } from './template-responses';
import { TemplatesService } from './templates.service';

@ApiTags('templates')
@ApiSecurity('ApiKeyAuth')
@Controller('templates')
export class TemplatesController {
  constructor(private readonly templates: TemplatesService) {}

  @Get()
  @ApiQuery({ name: 'teamID', required: false, description: "Must be the caller's team when given" })
  @ApiOkResponse({ type: [TemplateBody] })
  list(@CallerTeam() team: AuthenticatedTeam, @Query('teamID') teamId?: unknown): Promise<TemplateBody[]> {
    // E2B lets dashboard users pick a team; an API key belongs to exactly one, so any other team is not found.
    if (teamId !== undefined && teamId !== team.teamId) throw KilnError.notFound(`team ${String(teamId)}`);
    return this.templates.list(team.teamId);
  }

  @Get('aliases/:alias')
  @ApiOkResponse({ type: TemplateAliasBody })
  byAlias(@CallerTeam() team: AuthenticatedTeam, @Param('alias') alias: string): Promise<TemplateAliasBody> {
    if (alias.length > 128 || !TEMPLATE_REF_PATTERN.test(alias)) throw KilnError.invalid('alias must be a template alias');
    return this.templates.byAlias(team.teamId, alias);
  }
}
