import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { Type } from 'class-transformer';
import { ArrayMaxSize, ArrayMinSize, IsArray, IsDivisibleBy, IsIn, IsInt, IsOptional, IsString, Matches, Max, MaxLength, Min } from 'class-validator';

/** E2B's paginationLimit for a template's builds: default 100, maximum 100. */
export const TEMPLATE_BUILDS_MAX_LIMIT = 100;

/** Query of `GET /templates/{templateID}`: a page of the template's builds. */
export class TemplateBuildsQueryDto {
  @IsOptional() @Type(() => Number) @IsInt() @Min(1) @Max(TEMPLATE_BUILDS_MAX_LIMIT)
  limit?: number;

  @IsOptional() @IsString() @MaxLength(512)
  nextToken?: string;
}

/** Template names (aliases) and tags Kiln accepts: E2B's characters, no namespace. */
export const TEMPLATE_NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,127}$/i;
export const TEMPLATE_TAG_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const MAX_TAGS = 32;

/** Build resources E2B accepts from the SDK (CPUCount min 1, MemoryMB min 128 and even), capped at a host's size. */
export const BUILD_MAX_VCPUS = 8;
export const BUILD_MAX_MEMORY_MIB = 8192;

/** E2B's TemplateBuildRequestV3 (`POST /v3/templates`); `alias` is the deprecated spelling of `name`. */
/** Free space every built template's filesystem has (the host agent grows the shrunk rootfs by this much). */
export const BUILD_FREE_DISK_MIB = 1024;

export class TemplateBuildRequestV3Dto {
  @ApiPropertyOptional({ description: 'name or name:tag', maxLength: 128 })
  @IsOptional() @IsString() @MaxLength(128 + 1 + 128)
  name?: string;

  @ApiPropertyOptional({ type: [String] })
  @IsOptional() @IsArray() @ArrayMaxSize(MAX_TAGS) @IsString({ each: true }) @Matches(TEMPLATE_TAG_PATTERN, { each: true, message: 'each tag must be 1-128 letters, digits, ".", "_" or "-"' })
  tags?: string[];

  @ApiPropertyOptional({ deprecated: true, maxLength: 128 })
  @IsOptional() @IsString() @MaxLength(128)
  alias?: string;

  @ApiPropertyOptional({ deprecated: true })
  @IsOptional() @IsString() @MaxLength(128)
  teamID?: string;

  @ApiPropertyOptional({ minimum: 1, maximum: BUILD_MAX_VCPUS })
  @IsOptional() @IsInt() @Min(1) @Max(BUILD_MAX_VCPUS)
  cpuCount?: number;

  @ApiPropertyOptional({ minimum: 128, maximum: BUILD_MAX_MEMORY_MIB, description: 'MiB, even' })
  @IsOptional() @IsInt() @Min(128) @Max(BUILD_MAX_MEMORY_MIB) @IsDivisibleBy(2, { message: 'memoryMB must be an even number' })
  memoryMB?: number;

  /**
   * Free space wanted on the template's filesystem after the steps (SDK ≥ 2.51). Every build leaves 1 GiB free
   * (content + 1 GiB); growing further is not implemented, so more is refused rather than silently ignored.
   */
  @ApiPropertyOptional({ minimum: 0, maximum: BUILD_FREE_DISK_MIB })
  @IsOptional() @IsInt() @Min(0) @Max(BUILD_FREE_DISK_MIB, { message: `minFreeDiskMb above ${BUILD_FREE_DISK_MIB} is not supported: every build leaves ${BUILD_FREE_DISK_MIB} MiB free` })
  minFreeDiskMb?: number;
}

/** E2B's AssignTemplateTagsRequest (`POST /templates/tags`). */
export class AssignTemplateTagsDto {
  @ApiProperty({ description: 'name:tag (name alone: its newest ready build)' })
  @IsString() @MaxLength(128 + 1 + 128)
  target: string;

  @ApiProperty({ type: [String] })
  @IsArray() @ArrayMinSize(1) @ArrayMaxSize(MAX_TAGS) @IsString({ each: true }) @Matches(TEMPLATE_TAG_PATTERN, { each: true, message: 'each tag must be 1-128 letters, digits, ".", "_" or "-"' })
  tags: string[];
}

/** E2B's DeleteTemplateTagsRequest (`DELETE /templates/tags`). */
export class DeleteTemplateTagsDto {
  @ApiProperty({ description: 'Template name (or id)' })
  @IsString() @MaxLength(128)
  name: string;

  @ApiProperty({ type: [String] })
  @IsArray() @ArrayMinSize(1) @ArrayMaxSize(MAX_TAGS) @IsString({ each: true }) @Matches(TEMPLATE_TAG_PATTERN, { each: true, message: 'each tag must be 1-128 letters, digits, ".", "_" or "-"' })
  tags: string[];
}

const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;

/** E2B's maximum of log entries per status or logs call. */
export const BUILD_LOGS_MAX_LIMIT = 100;

/** Query of `GET /templates/{templateID}/builds/{buildID}/status`. */
export class BuildStatusQueryDto {
  @IsOptional() @Type(() => Number) @IsInt() @Min(0) @Max(2_147_483_647)
  logsOffset?: number;

  @IsOptional() @Type(() => Number) @IsInt() @Min(0) @Max(BUILD_LOGS_MAX_LIMIT)
  limit?: number;

  @IsOptional() @IsIn(LOG_LEVELS)
  level?: (typeof LOG_LEVELS)[number];
}

/** Query of `GET /templates/{templateID}/builds/{buildID}/logs`. */
export class BuildLogsQueryDto {
  /** Milliseconds since the epoch. */
  @IsOptional() @Type(() => Number) @IsInt() @Min(0)
  cursor?: number;

  @IsOptional() @Type(() => Number) @IsInt() @Min(0) @Max(BUILD_LOGS_MAX_LIMIT)
  limit?: number;

  @IsOptional() @IsIn(['forward', 'backward'])
  direction?: 'forward' | 'backward';

  @IsOptional() @IsIn(LOG_LEVELS)
  level?: (typeof LOG_LEVELS)[number];

  /** E2B's temporary (live) or persistent logs: Kiln stores every entry, so both read the same store. */
  @IsOptional() @IsIn(['temporary', 'persistent'])
  source?: 'temporary' | 'persistent';
}

/** Query of the upload URL (`PUT /templates/{templateID}/files/{hash}?token=…`). */
export class TemplateFileUploadQueryDto {
  @IsOptional() @IsString() @MaxLength(512)
  token?: string;
}
