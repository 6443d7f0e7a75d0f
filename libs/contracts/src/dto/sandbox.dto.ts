import { Transform, Type } from 'class-transformer';
import {
  IsBoolean,
  IsIn,
  IsInt,
  IsOptional,
  IsString,
  Matches,
  Max,
  MaxLength,
  Min,
  MinLength,
} from 'class-validator';
import { IsStringRecord } from '../validation/string-record.validator';

/** Longest sandbox lifetime one call may ask for (E2B's ceiling for long-running sandboxes). */
export const MAX_SANDBOX_TIMEOUT_SECONDS = 24 * 60 * 60;
/** E2B's default sandbox timeout. */
export const DEFAULT_SANDBOX_TIMEOUT_SECONDS = 15;

const METADATA_LIMITS = { maxEntries: 64, maxKeyLength: 128, maxValueLength: 1024 };
const ENV_LIMITS = { maxEntries: 256, maxKeyLength: 256, maxValueLength: 32 * 1024 };

export const TEMPLATE_REF_PATTERN = /^[a-z0-9][a-z0-9._/-]*(:[a-z0-9._-]+)?$/i;

/** Body of `POST /sandboxes` (E2B's NewSandbox). */
export class NewSandboxDto {
  @IsString()
  @MinLength(1)
  @MaxLength(128)
  @Matches(TEMPLATE_REF_PATTERN, { message: 'templateID must be a template id or alias' })
  templateID: string;

  @IsOptional()
  @IsInt()
  @Min(0)
  @Max(MAX_SANDBOX_TIMEOUT_SECONDS)
  timeout?: number;

  @IsOptional()
  @IsBoolean()
  autoPause?: boolean;

  @IsOptional()
  @IsBoolean()
  secure?: boolean;

  @IsOptional()
  @IsBoolean()
  allow_internet_access?: boolean;

  @IsOptional()
  @IsStringRecord(METADATA_LIMITS)
  metadata?: Record<string, string>;

  @IsOptional()
  @IsStringRecord(ENV_LIMITS)
  envVars?: Record<string, string>;
}

/** Body of `POST /sandboxes/{id}/timeout`. */
export class SandboxTimeoutDto {
  @IsInt()
  @Min(0)
  @Max(MAX_SANDBOX_TIMEOUT_SECONDS)
  timeout: number;
}

/** Body of `POST /sandboxes/{id}/refreshes`. */
export class SandboxRefreshDto {
  @IsOptional()
  @IsInt()
  @Min(0)
  @Max(3600)
  duration?: number;
}

/** Body of `POST /sandboxes/{id}/resume` and `/connect`. */
export class ResumeSandboxDto {
  @IsOptional()
  @IsInt()
  @Min(0)
  @Max(MAX_SANDBOX_TIMEOUT_SECONDS)
  timeout?: number;

  @IsOptional()
  @IsBoolean()
  autoPause?: boolean;
}

export const SANDBOX_ID_PATTERN = /^[a-z0-9]{1,64}$/;

/** Query of `GET /sandboxes` and `GET /v2/sandboxes`. */
export class ListSandboxesQueryDto {
  /** URL-encoded `key=value&key2=value2`, as the E2B SDK sends it. */
  @IsOptional()
  @IsString()
  @MaxLength(4096)
  metadata?: string;

  @IsOptional()
  @Transform(({ value }) => (typeof value === 'string' ? value.split(',') : value))
  @IsIn(['running', 'paused'], { each: true, message: 'state must be running and/or paused' })
  state?: Array<'running' | 'paused'>;

  @IsOptional()
  @IsString()
  @MaxLength(512)
  nextToken?: string;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(1000)
  limit?: number;
}
