import { Body, Controller, Delete, Get, HttpCode, Param, Post, Put, Query, Req, Res } from '@nestjs/common';
import {
  ApiAcceptedResponse,
  ApiBody,
  ApiConsumes,
  ApiCreatedResponse,
  ApiNoContentResponse,
  ApiOkResponse,
  ApiOperation,
  ApiQuery,
  ApiSecurity,
  ApiTags,
} from '@nestjs/swagger';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { KilnError, TEMPLATE_REF_PATTERN } from '@kiln/contracts';
import { AuthenticatedTeam, CallerTeam } from '../auth/authenticated-team';
import { PublicRoute } from '../auth/public-route.decorator';
import { MAX_PAYLOAD_DEPTH, PayloadPipe, nestsDeeperThan } from '../validation/payload.pipe';
import {
  AssignTemplateTagsDto,
  BuildLogsQueryDto,
  BuildStatusQueryDto,
  DeleteTemplateTagsDto,
  TemplateBuildRequestV3Dto,
} from './template-request.dto';
import {
  AssignedTemplateTagsBody,
  TemplateBuildFileUploadBody,
  TemplateBuildInfoBody,
  TemplateBuildLogsBody,
  TemplateRequestResponseV3Body,
  TemplateTagBody,
} from './template-build-responses';
import { TemplateBuildsService } from './template-builds.service';

function templateRef(value: string): string {
  if (value.length > 260 || !TEMPLATE_REF_PATTERN.test(value)) throw KilnError.invalid('templateID must be a template id or name');
  return value;
}

/** The base URL the caller reached this gateway at: upload URLs point back to it (scheme and host as it used them). */
function baseUrlOf(request: FastifyRequest): string {
  return `${request.protocol}://${request.host}`;
}

/** E2B's template build routes (SDK `Template.build`, tags, build status and logs); thin: TemplateBuildsService does the work. */
@ApiTags('templates')
@ApiSecurity('ApiKeyAuth')
@Controller()
export class TemplateBuildsController {
  constructor(private readonly builds: TemplateBuildsService) {}

  @Post('v3/templates')
  @HttpCode(202)
  @ApiOperation({ summary: "Create a template (or reuse the team's template of that name) and a build waiting for its definition" })
  @ApiAcceptedResponse({ type: TemplateRequestResponseV3Body })
  requestBuild(
    @CallerTeam() team: AuthenticatedTeam,
    @Body(new PayloadPipe(TemplateBuildRequestV3Dto)) body: TemplateBuildRequestV3Dto,
  ): Promise<TemplateRequestResponseV3Body> {
    if (body.teamID !== undefined && body.teamID !== team.teamId) throw KilnError.notFound(`team ${body.teamID}`);
    return this.builds.requestBuild(team.teamId, body);
  }

  @Get('templates/:templateID/files/:hash')
  @HttpCode(201)
  @ApiOperation({ summary: 'Whether the build files are uploaded already; if not, a signed URL of this gateway to PUT them to' })
  @ApiCreatedResponse({ type: TemplateBuildFileUploadBody })
  fileUploadLink(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('templateID') templateId: string,
    @Param('hash') hash: string,
    @Req() request: FastifyRequest,
  ): Promise<TemplateBuildFileUploadBody> {
    return this.builds.fileUploadLink(team.teamId, templateRef(templateId), hash, baseUrlOf(request));
  }

  /**
   * The upload URL: no API key (the SDK sends none, as to a presigned S3 URL); the `token` authorises exactly this
   * archive for 1 hour. The body (tar or gzipped tar, any content type) is streamed to the artifact store.
   */
  @Put('templates/:templateID/files/:hash')
  @PublicRoute()
  @HttpCode(204)
  @ApiOperation({ summary: 'Upload build files (Kiln: the URL that GET /templates/{templateID}/files/{hash} hands out)' })
  @ApiConsumes('application/octet-stream')
  @ApiBody({ schema: { type: 'string', format: 'binary' } })
  @ApiQuery({ name: 'token', required: true, type: String })
  @ApiNoContentResponse({ description: 'Stored' })
  async upload(
    @Param('templateID') templateId: string,
    @Param('hash') hash: string,
    @Query('token') token: unknown,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
  ): Promise<void> {
    const length = request.headers['content-length'];
    try {
      await this.builds.storeUpload(templateId, hash, token, request.raw, length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined);
    } catch (error) {
      // Whatever of the body is still unread is not worth reading: close the connection after the answer.
      if (!request.raw.readableEnded) reply.header('connection', 'close');
      throw error;
    }
  }

  @Post('v2/templates/:templateID/builds/:buildID')
  @HttpCode(202)
  @ApiOperation({ summary: 'Start a build from its definition (TemplateBuildStartV2); 400 names the step that cannot run' })
  @ApiBody({ schema: { type: 'object', description: "E2B's TemplateBuildStartV2" } })
  @ApiAcceptedResponse({ description: 'Queued' })
  async startBuild(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('templateID') templateId: string,
    @Param('buildID') buildId: string,
    @Body() body: unknown,
  ): Promise<void> {
    if (nestsDeeperThan(body, MAX_PAYLOAD_DEPTH)) throw KilnError.invalid(`request body nests deeper than ${MAX_PAYLOAD_DEPTH} levels`);
    await this.builds.startBuild(team.teamId, templateRef(templateId), buildId, body);
  }

  @Get('templates/:templateID/builds/:buildID/status')
  @ApiOkResponse({ type: TemplateBuildInfoBody })
  status(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('templateID') templateId: string,
    @Param('buildID') buildId: string,
    @Query(new PayloadPipe(BuildStatusQueryDto)) query: BuildStatusQueryDto,
  ): Promise<TemplateBuildInfoBody> {
    return this.builds.status(team.teamId, templateRef(templateId), buildId, query);
  }

  @Get('templates/:templateID/builds/:buildID/logs')
  @ApiOkResponse({ type: TemplateBuildLogsBody })
  logs(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('templateID') templateId: string,
    @Param('buildID') buildId: string,
    @Query(new PayloadPipe(BuildLogsQueryDto)) query: BuildLogsQueryDto,
  ): Promise<TemplateBuildLogsBody> {
    return this.builds.logs(team.teamId, templateRef(templateId), buildId, query);
  }

  /** Kiln's extension: stop a build that is waiting or building (the builder ends it `error`, "cancelled"). */
  @Delete('templates/:templateID/builds/:buildID')
  @HttpCode(202)
  @ApiOperation({ summary: 'Cancel a build (Kiln extension): 202 when it was waiting or building, 409 when it had finished' })
  @ApiAcceptedResponse({ description: 'Cancellation requested' })
  async cancelBuild(@CallerTeam() team: AuthenticatedTeam, @Param('templateID') templateId: string, @Param('buildID') buildId: string): Promise<void> {
    await this.builds.cancelBuild(team.teamId, templateRef(templateId), buildId);
  }

  @Post('templates/tags')
  @HttpCode(201)
  @ApiCreatedResponse({ type: AssignedTemplateTagsBody })
  assignTags(@CallerTeam() team: AuthenticatedTeam, @Body(new PayloadPipe(AssignTemplateTagsDto)) body: AssignTemplateTagsDto): Promise<AssignedTemplateTagsBody> {
    templateRef(body.target);
    return this.builds.assignTags(team.teamId, body);
  }

  @Delete('templates/tags')
  @HttpCode(204)
  @ApiNoContentResponse({ description: 'Deleted' })
  async removeTags(@CallerTeam() team: AuthenticatedTeam, @Body(new PayloadPipe(DeleteTemplateTagsDto)) body: DeleteTemplateTagsDto): Promise<void> {
    templateRef(body.name);
    await this.builds.removeTags(team.teamId, body);
  }

  @Get('templates/:templateID/tags')
  @ApiOkResponse({ type: [TemplateTagBody] })
  listTags(@CallerTeam() team: AuthenticatedTeam, @Param('templateID') templateId: string): Promise<TemplateTagBody[]> {
    return this.builds.listTags(team.teamId, templateRef(templateId));
  }
}
