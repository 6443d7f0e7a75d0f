import { Body, Controller, Delete, Get, Headers, HttpCode, Param, Post, Put, Query, Res } from '@nestjs/common';
import { ApiBody, ApiCreatedResponse, ApiHeader, ApiNoContentResponse, ApiOkResponse, ApiOperation, ApiQuery, ApiSecurity, ApiTags } from '@nestjs/swagger';
import type { FastifyReply } from 'fastify';
import { GatewayEnv } from '@kiln/config';
import {
  KilnError,
  ListSnapshotsQueryDto,
  NewSandboxDto,
  PauseSandboxDto,
  ResumeSandboxDto,
  SandboxForkDto,
  SandboxSnapshotDto,
  SandboxRefreshDto,
  SandboxTimeoutDto,
  UpdateSandboxNetworkDto,
} from '@kiln/contracts';
import { AuthenticatedTeam, CallerTeam } from '../auth/authenticated-team';
import { PayloadPipe } from '../validation/payload.pipe';
import { SandboxIdPipe } from '../validation/sandbox-id.pipe';
import { parseSandboxListQuery } from './sandbox-list-query';
import { MetricsWindowQueryDto, SandboxLogsV1QueryDto, SandboxLogsV2QueryDto } from './sandbox-request.dto';
import {
  ForkResultBody,
  ListedSandboxBody,
  SnapshotInfoBody,
  SandboxBody,
  SandboxDetailBody,
  SandboxLogsBody,
  SandboxLogsV2Body,
  SandboxMetricBody,
  toListedSandboxBody,
  toSandboxBody,
  toSandboxDetailBody,
} from './sandbox-responses';
import { SandboxesService } from './sandboxes.service';
import { rejectUnsupportedConnectOptions, rejectUnsupportedCreateOptions, rejectUnsupportedNetworkUpdate } from './unsupported-create-options';

const IDEMPOTENCY_KEY_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;
const LIST_QUERY_DOC = [
  { name: 'metadata', required: false, type: String, description: 'URL-encoded key=value&key2=value2 filter' },
  { name: 'state', required: false, type: String, description: 'running and/or paused, comma-separated' },
  { name: 'order', required: false, enum: ['asc', 'desc'], description: 'By start time (sandbox id breaks ties); default desc, newest first' },
  { name: 'startedAfter', required: false, type: String, description: 'RFC 3339 date-time: only sandboxes started at or after it' },
  { name: 'template', required: false, type: String, description: 'Template id or alias (no tag)' },
  { name: 'limit', required: false, type: Number, description: '1-100, default 100' },
  { name: 'nextToken', required: false, type: String, description: 'The x-next-token header of the previous page (same order)' },
];

/** E2B's sandbox lifecycle API. Thin: validation happens in pipes, logic in SandboxesService. */
@ApiTags('sandboxes')
@ApiSecurity('ApiKeyAuth')
@Controller()
export class SandboxesController {
  constructor(
    private readonly sandboxes: SandboxesService,
    private readonly env: GatewayEnv,
  ) {}

  @Post(['sandboxes', 'v2/sandboxes'])
  @HttpCode(201)
  @ApiOperation({ summary: 'Create a sandbox from a template' })
  @ApiBody({ type: NewSandboxDto })
  @ApiHeader({ name: 'Idempotency-Key', required: false, description: 'Retries with the same key return the same sandbox' })
  @ApiCreatedResponse({ type: SandboxBody })
  async create(
    @CallerTeam() team: AuthenticatedTeam,
    @Body(new PayloadPipe(NewSandboxDto, { precheck: rejectUnsupportedCreateOptions })) body: NewSandboxDto,
    @Headers('idempotency-key') idempotencyKey?: string,
  ): Promise<SandboxBody> {
    if (idempotencyKey !== undefined && !IDEMPOTENCY_KEY_PATTERN.test(idempotencyKey)) {
      throw KilnError.invalid('Idempotency-Key must be 1-128 characters of letters, digits, . _ : -');
    }
    return toSandboxBody(await this.sandboxes.create(team.teamId, body, idempotencyKey), this.env.KILN_DOMAIN);
  }

  @Get('sandboxes')
  @ApiOperation({ summary: 'List running sandboxes (deprecated E2B v1 list, unpaged)' })
  @ApiQuery({ name: 'metadata', required: false, type: String })
  @ApiOkResponse({ type: [ListedSandboxBody] })
  async listV1(@CallerTeam() team: AuthenticatedTeam, @Query() query: Record<string, unknown>): Promise<ListedSandboxBody[]> {
    const filter = parseSandboxListQuery({ metadata: query.metadata });
    return (await this.sandboxes.listAllRunning(team.teamId, filter.metadata)).map(toListedSandboxBody);
  }

  @Get('v2/sandboxes')
  @ApiOperation({ summary: 'List sandboxes; the next page token is returned in the x-next-token header' })
  @ApiQuery(LIST_QUERY_DOC[0])
  @ApiQuery(LIST_QUERY_DOC[1])
  @ApiQuery(LIST_QUERY_DOC[2])
  @ApiQuery(LIST_QUERY_DOC[3])
  @ApiQuery(LIST_QUERY_DOC[4])
  @ApiQuery(LIST_QUERY_DOC[5])
  @ApiQuery(LIST_QUERY_DOC[6])
  @ApiOkResponse({ type: [ListedSandboxBody] })
  async list(
    @CallerTeam() team: AuthenticatedTeam,
    @Query() query: Record<string, unknown>,
    @Res({ passthrough: true }) reply: FastifyReply,
  ): Promise<ListedSandboxBody[]> {
    const page = await this.sandboxes.list(team.teamId, parseSandboxListQuery(query));
    if (page.nextToken) reply.header('x-next-token', page.nextToken);
    // E2B: running sandboxes matching the filters, all pages; only sent when running ones were asked for.
    if (page.totalRunning !== undefined) reply.header('x-total-running', String(page.totalRunning));
    return page.sandboxes.map(toListedSandboxBody);
  }

  @Get('sandboxes/:sandboxID')
  @ApiOkResponse({ type: SandboxDetailBody })
  async get(@CallerTeam() team: AuthenticatedTeam, @Param('sandboxID', SandboxIdPipe) sandboxId: string): Promise<SandboxDetailBody> {
    return toSandboxDetailBody(await this.sandboxes.get(team.teamId, sandboxId), this.env.KILN_DOMAIN);
  }

  @Delete('sandboxes/:sandboxID')
  @HttpCode(204)
  @ApiNoContentResponse({ description: 'Killed' })
  async kill(@CallerTeam() team: AuthenticatedTeam, @Param('sandboxID', SandboxIdPipe) sandboxId: string): Promise<void> {
    await this.sandboxes.kill(team.teamId, sandboxId);
  }

  @Put('sandboxes/:sandboxID/network')
  @HttpCode(204)
  @ApiBody({ type: UpdateSandboxNetworkDto })
  @ApiNoContentResponse({ description: "The sandbox's egress rules were replaced; new connections follow them" })
  async updateNetwork(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Body(new PayloadPipe(UpdateSandboxNetworkDto, { precheck: rejectUnsupportedNetworkUpdate })) body: UpdateSandboxNetworkDto,
  ): Promise<void> {
    await this.sandboxes.updateNetwork(team.teamId, sandboxId, body);
  }

  @Post('sandboxes/:sandboxID/timeout')
  @HttpCode(204)
  @ApiBody({ type: SandboxTimeoutDto })
  @ApiNoContentResponse({ description: 'The sandbox now expires `timeout` seconds from now' })
  async setTimeout(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Body(new PayloadPipe(SandboxTimeoutDto)) body: SandboxTimeoutDto,
  ): Promise<void> {
    await this.sandboxes.setTimeout(team.teamId, sandboxId, body.timeout);
  }

  @Post('sandboxes/:sandboxID/refreshes')
  @HttpCode(204)
  @ApiBody({ type: SandboxRefreshDto, required: false })
  @ApiNoContentResponse({ description: 'Refreshed' })
  async refresh(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Body(new PayloadPipe(SandboxRefreshDto, { optional: true })) body: SandboxRefreshDto,
  ): Promise<void> {
    await this.sandboxes.refresh(team.teamId, sandboxId, body.duration);
  }

  @Post(['sandboxes/:sandboxID/connect', 'v2/sandboxes/:sandboxID/connect'])
  @HttpCode(200)
  @ApiOperation({ summary: 'Return a running sandbox (200, extending, never shortening, its timeout) or resume a paused one (201)' })
  @ApiBody({ type: ResumeSandboxDto, required: false })
  @ApiOkResponse({ type: SandboxBody })
  @ApiCreatedResponse({ type: SandboxBody, description: 'The sandbox was paused and is resumed' })
  async connect(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Body(new PayloadPipe(ResumeSandboxDto, { optional: true, precheck: rejectUnsupportedConnectOptions })) body: ResumeSandboxDto,
    @Res({ passthrough: true }) reply: FastifyReply,
  ): Promise<SandboxBody> {
    const result = await this.sandboxes.connect(team.teamId, sandboxId, body);
    if (result.resumed) reply.status(201);
    return toSandboxBody(result.sandbox, this.env.KILN_DOMAIN);
  }

  @Post('sandboxes/:sandboxID/pause')
  @HttpCode(204)
  @ApiOperation({ summary: 'Pause a running sandbox (409 when it is already paused)' })
  @ApiBody({ type: PauseSandboxDto, required: false })
  @ApiNoContentResponse({ description: 'Paused; resume it with connect or resume' })
  async pause(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Body(new PayloadPipe(PauseSandboxDto, { optional: true })) body: PauseSandboxDto,
  ): Promise<void> {
    await this.sandboxes.pause(team.teamId, sandboxId, body.memory ?? true);
  }

  @Post('sandboxes/:sandboxID/resume')
  @HttpCode(201)
  @ApiOperation({ summary: 'Resume a paused sandbox (deprecated in E2B: use connect); 409 when it is running' })
  @ApiBody({ type: ResumeSandboxDto, required: false })
  @ApiCreatedResponse({ type: SandboxBody })
  async resume(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Body(new PayloadPipe(ResumeSandboxDto, { optional: true, precheck: rejectUnsupportedConnectOptions })) body: ResumeSandboxDto,
  ): Promise<SandboxBody> {
    return toSandboxBody((await this.sandboxes.resume(team.teamId, sandboxId, body)).sandbox, this.env.KILN_DOMAIN);
  }

  @Post('sandboxes/:sandboxID/fork')
  @HttpCode(201)
  @ApiOperation({ summary: 'Fork a running sandbox into `count` new ones; one result per fork, a sandbox or an error' })
  @ApiBody({ type: SandboxForkDto, required: false })
  @ApiCreatedResponse({ type: [ForkResultBody] })
  async fork(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Body(new PayloadPipe(SandboxForkDto, { optional: true })) body: SandboxForkDto,
  ): Promise<ForkResultBody[]> {
    const reply = await this.sandboxes.fork(team.teamId, sandboxId, body);
    return reply.results.map((result) => ('sandbox' in result ? { sandbox: toSandboxBody(result.sandbox, this.env.KILN_DOMAIN) } : { error: result.error }));
  }

  @Post('sandboxes/:sandboxID/snapshots')
  @HttpCode(201)
  @ApiOperation({ summary: "Snapshot a running sandbox's state into a snapshot that outlives it (Sandbox.create(snapshotID) starts from it)" })
  @ApiBody({ type: SandboxSnapshotDto, required: false })
  @ApiCreatedResponse({ type: SnapshotInfoBody })
  createSnapshot(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Body(new PayloadPipe(SandboxSnapshotDto, { optional: true })) body: SandboxSnapshotDto,
  ): Promise<SnapshotInfoBody> {
    return this.sandboxes.createSnapshot(team.teamId, sandboxId, body.name);
  }

  @Get('snapshots')
  @ApiOperation({ summary: "The team's snapshots, newest first; the next page token is returned in the x-next-token header" })
  @ApiQuery({ name: 'sandboxID', required: false, type: String })
  @ApiQuery({ name: 'name', required: false, type: String })
  @ApiQuery({ name: 'limit', required: false, type: Number })
  @ApiQuery({ name: 'nextToken', required: false, type: String })
  @ApiOkResponse({ type: [SnapshotInfoBody] })
  async listSnapshots(
    @CallerTeam() team: AuthenticatedTeam,
    @Query(new PayloadPipe(ListSnapshotsQueryDto)) query: ListSnapshotsQueryDto,
    @Res({ passthrough: true }) reply: FastifyReply,
  ): Promise<SnapshotInfoBody[]> {
    const page = await this.sandboxes.listSnapshots(team.teamId, query);
    if (page.nextToken) reply.header('x-next-token', page.nextToken);
    return page.snapshots;
  }

  @Get('sandboxes/:sandboxID/metrics')
  @ApiQuery({ name: 'start', required: false, type: Number })
  @ApiQuery({ name: 'end', required: false, type: Number })
  @ApiOkResponse({ type: [SandboxMetricBody] })
  metrics(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Query(new PayloadPipe(MetricsWindowQueryDto)) query: MetricsWindowQueryDto,
  ): Promise<SandboxMetricBody[]> {
    return this.sandboxes.metrics(team.teamId, sandboxId, query);
  }

  @Get('v2/sandboxes/:sandboxID/logs')
  @ApiOkResponse({ type: SandboxLogsV2Body })
  async logsV2(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Query(new PayloadPipe(SandboxLogsV2QueryDto)) query: SandboxLogsV2QueryDto,
  ): Promise<SandboxLogsV2Body> {
    const lines = await this.sandboxes.logs(team.teamId, sandboxId, {
      sinceMs: query.cursor,
      limit: query.limit ?? 1000,
      direction: query.direction ?? 'forward',
      search: query.search,
    });
    // Kiln's sandbox logs are lifecycle lines at info level, so a `level` above info filters them all out.
    const levelAllowsInfo = query.level === undefined || query.level === 'debug' || query.level === 'info';
    return { logs: levelAllowsInfo ? lines.map((l) => ({ timestamp: l.timestamp, message: l.line, level: 'info', fields: {} })) : [] };
  }

  @Get('sandboxes/:sandboxID/logs')
  @ApiOkResponse({ type: SandboxLogsBody })
  async logsV1(
    @CallerTeam() team: AuthenticatedTeam,
    @Param('sandboxID', SandboxIdPipe) sandboxId: string,
    @Query(new PayloadPipe(SandboxLogsV1QueryDto)) query: SandboxLogsV1QueryDto,
  ): Promise<SandboxLogsBody> {
    const lines = await this.sandboxes.logs(team.teamId, sandboxId, { sinceMs: query.start, limit: query.limit ?? 1000, direction: 'forward' });
    return {
      logs: lines,
      logEntries: lines.map((l) => ({ timestamp: l.timestamp, message: l.line, level: 'info', fields: {} })),
    };
  }
}
