import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { BuildState, ENVD_COMPAT_VERSION } from '@kiln/contracts';
import type { TemplateRepository } from '@kiln/db';

type VisibleTemplate = Awaited<ReturnType<TemplateRepository['listVisible']>>[number];
type FoundTemplate = NonNullable<Awaited<ReturnType<TemplateRepository['findVisible']>>>;
type TemplateBuildRecord = Awaited<ReturnType<TemplateRepository['buildsPage']>>[number];

/**
 * A build's status as E2B reports it: `waiting` until it is started (POST /v2/templates/{id}/builds/{buildID} with its
 * definition), `building` from then on, whether a builder has picked it up yet or not (the SDK's `buildInBackground`
 * expects `building` straight away), then `ready` or `error`. Kiln's row stays `waiting` while the build is queued.
 */
export function e2bBuildStatus(build: { state: string; definition: unknown }): string {
  return build.state === BuildState.Waiting && build.definition !== null ? BuildState.Building : build.state;
}

/** The counters the scheduler moves when a sandbox from the template reaches running. */
function spawnCountersOf(template: { spawnCount: bigint; lastSpawnedAt: Date | null }): { spawnCount: number; lastSpawnedAt: string | null } {
  // A BIGINT in Postgres (E2B: int64); a JSON number is exact up to 2^53, far beyond any real count.
  return { spawnCount: Number(template.spawnCount), lastSpawnedAt: template.lastSpawnedAt?.toISOString() ?? null };
}

/** E2B's `Template`. */
export class TemplateBody {
  @ApiProperty() templateID: string;
  @ApiProperty({ description: 'Last successful build (else the newest; empty when the template has no build)' }) buildID: string;
  @ApiProperty() cpuCount: number;
  @ApiProperty() memoryMB: number;
  @ApiProperty() diskSizeMB: number;
  @ApiProperty() public: boolean;
  @ApiProperty({ type: [String], deprecated: true }) aliases: string[];
  @ApiProperty({ type: [String] }) names: string[];
  @ApiProperty({ format: 'date-time' }) createdAt: string;
  @ApiProperty({ format: 'date-time' }) updatedAt: string;
  @ApiPropertyOptional({ nullable: true, type: Object }) createdBy: null;
  @ApiPropertyOptional({ nullable: true, type: String, format: 'date-time' }) lastSpawnedAt: string | null;
  @ApiProperty() spawnCount: number;
  @ApiProperty({ description: 'Builds of this template' }) buildCount: number;
  @ApiProperty() envdVersion: string;
  @ApiProperty({ enum: ['building', 'waiting', 'ready', 'error'], description: 'Status of the newest build' }) buildStatus: string;
}

/** E2B's `TemplateBuild`. */
export class TemplateBuildBody {
  @ApiProperty({ format: 'uuid' }) buildID: string;
  @ApiProperty({ enum: ['building', 'waiting', 'ready', 'error'] }) status: string;
  @ApiProperty({ format: 'date-time' }) createdAt: string;
  @ApiProperty({ format: 'date-time' }) updatedAt: string;
  @ApiPropertyOptional({ format: 'date-time' }) finishedAt?: string;
  @ApiProperty() cpuCount: number;
  @ApiProperty() memoryMB: number;
  @ApiPropertyOptional() diskSizeMB?: number;
  @ApiPropertyOptional() envdVersion?: string;
}

/** E2B's `TemplateWithBuilds` (`GET /templates/{templateID}`); the builds page's next token is the x-next-token header. */
export class TemplateWithBuildsBody {
  @ApiProperty() templateID: string;
  @ApiProperty() public: boolean;
  @ApiProperty({ type: [String], deprecated: true }) aliases: string[];
  @ApiProperty({ type: [String] }) names: string[];
  @ApiProperty({ format: 'date-time' }) createdAt: string;
  @ApiProperty({ format: 'date-time' }) updatedAt: string;
  @ApiPropertyOptional({ nullable: true, type: String, format: 'date-time' }) lastSpawnedAt: string | null;
  @ApiProperty() spawnCount: number;
  @ApiProperty({ type: [TemplateBuildBody] }) builds: TemplateBuildBody[];
}

/** E2B's `TemplateAliasResponse`. */
export class TemplateAliasBody {
  @ApiProperty() templateID: string;
  @ApiProperty() public: boolean;
}

export function toTemplateBody(template: VisibleTemplate): TemplateBody {
  // E2B: buildID is the last successful build; buildStatus (and the resources) are the newest build's.
  const latest = template.builds[0];
  const aliases = template.aliases.map((a) => a.alias);
  return {
    templateID: template.id,
    buildID: template.latestReady?.id ?? latest?.id ?? '',
    cpuCount: latest?.vcpus ?? template.vcpus,
    memoryMB: latest?.memoryMib ?? template.memoryMib,
    diskSizeMB: latest?.diskMib ?? template.diskMib,
    public: template.public,
    aliases,
    names: aliases,
    createdAt: template.createdAt.toISOString(),
    updatedAt: template.updatedAt.toISOString(),
    createdBy: null,
    ...spawnCountersOf(template),
    buildCount: template._count.builds,
    envdVersion: latest?.envdVersion ?? ENVD_COMPAT_VERSION,
    buildStatus: latest ? e2bBuildStatus(latest) : BuildState.Waiting,
  };
}

export function toTemplateBuildBody(build: TemplateBuildRecord): TemplateBuildBody {
  return {
    buildID: build.id,
    status: e2bBuildStatus(build),
    createdAt: build.createdAt.toISOString(),
    updatedAt: build.updatedAt.toISOString(),
    ...(build.finishedAt ? { finishedAt: build.finishedAt.toISOString() } : {}),
    cpuCount: build.vcpus,
    memoryMB: build.memoryMib,
    diskSizeMB: build.diskMib,
    ...(build.envdVersion ? { envdVersion: build.envdVersion } : {}),
  };
}

export function toTemplateWithBuildsBody(template: FoundTemplate, builds: TemplateBuildRecord[]): TemplateWithBuildsBody {
  const aliases = template.aliases.map((a) => a.alias);
  return {
    templateID: template.id,
    public: template.public,
    aliases,
    names: aliases,
    createdAt: template.createdAt.toISOString(),
    updatedAt: template.updatedAt.toISOString(),
    ...spawnCountersOf(template),
    builds: builds.map(toTemplateBuildBody),
  };
}
