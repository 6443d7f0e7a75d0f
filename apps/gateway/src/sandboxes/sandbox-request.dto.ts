import { Type } from 'class-transformer';
import { IsIn, IsInt, IsOptional, IsString, Max, MaxLength, Min } from 'class-validator';

/** Query of `GET /sandboxes/{id}/metrics`: a window in Unix seconds. */
export class MetricsWindowQueryDto {
  @IsOptional() @Type(() => Number) @IsInt() @Min(0)
  start?: number;

  @IsOptional() @Type(() => Number) @IsInt() @Min(0)
  end?: number;
}

/** Query of `GET /v2/sandboxes/{id}/logs`. */
export class SandboxLogsV2QueryDto {
  /** Start time in milliseconds since the epoch. */
  @IsOptional() @Type(() => Number) @IsInt() @Min(0)
  cursor?: number;

  @IsOptional() @Type(() => Number) @IsInt() @Min(0) @Max(1000)
  limit?: number;

  @IsOptional() @IsIn(['forward', 'backward'])
  direction?: 'forward' | 'backward';

  @IsOptional() @IsIn(['debug', 'info', 'warn', 'error'])
  level?: 'debug' | 'info' | 'warn' | 'error';

  @IsOptional() @IsString() @MaxLength(256)
  search?: string;
}

/** Query of the deprecated `GET /sandboxes/{id}/logs`. */
export class SandboxLogsV1QueryDto {
  @IsOptional() @Type(() => Number) @IsInt() @Min(0)
  start?: number;

  @IsOptional() @Type(() => Number) @IsInt() @Min(0) @Max(10_000)
  limit?: number;
}
