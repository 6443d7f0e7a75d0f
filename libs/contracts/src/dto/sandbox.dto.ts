import { Transform, Type } from 'class-transformer';
import {
  ArrayMaxSize,
  IsArray,
  IsBoolean,
  IsIn,
  IsInt,
  IsObject,
  IsOptional,
  IsString,
  Matches,
  Max,
  MaxLength,
  Min,
  MinLength,
  ValidateNested,
} from 'class-validator';
import { MAX_EGRESS_RULES } from '../network/egress-policy';
import { IsStringRecord } from '../validation/string-record.validator';

/** Longest sandbox lifetime one call may ask for (E2B's ceiling for long-running sandboxes). */
export const MAX_SANDBOX_TIMEOUT_SECONDS = 24 * 60 * 60;
/** E2B's default sandbox timeout. */
export const DEFAULT_SANDBOX_TIMEOUT_SECONDS = 15;

const METADATA_LIMITS = { maxEntries: 64, maxKeyLength: 128, maxValueLength: 1024 };
const ENV_LIMITS = { maxEntries: 256, maxKeyLength: 256, maxValueLength: 32 * 1024 };

export const TEMPLATE_REF_PATTERN = /^[a-z0-9][a-z0-9._/-]*(:[a-z0-9._-]+)?$/i;

/** A Host header value, optionally with `${PORT}` standing for the sandbox port the request is for. */
const MASK_REQUEST_HOST_PATTERN = /^(?:[a-z0-9-]+|\$\{PORT\})(?:\.(?:[a-z0-9-]+|\$\{PORT\}))*(?::(?:\d{1,5}|\$\{PORT\}))?$/i;

/**
 * E2B's egress lists. Entries are only checked for type and count here; `normaliseEgressPolicy` validates each one and
 * names the first bad entry.
 */
class EgressListsDto {
  @IsOptional()
  @IsArray()
  @ArrayMaxSize(MAX_EGRESS_RULES)
  @IsString({ each: true })
  allowOut?: string[];

  @IsOptional()
  @IsArray()
  @ArrayMaxSize(MAX_EGRESS_RULES)
  @IsString({ each: true })
  denyOut?: string[];
}

/** E2B's SandboxNetworkConfig (`network` in the create body). `egressProxy` and `rules` are refused before this. */
export class SandboxNetworkDto extends EgressListsDto {
  @IsOptional()
  @IsBoolean()
  allowPublicTraffic?: boolean;

  @IsOptional()
  @IsString()
  @MaxLength(253)
  @Matches(MASK_REQUEST_HOST_PATTERN, { message: 'network.maskRequestHost must be a host name, optionally with :port, where ${PORT} stands for the port' })
  maskRequestHost?: string;
}

/** Body of `PUT /sandboxes/{id}/network` (E2B's SandboxNetworkUpdateConfig): replaces the rules; omitted fields clear. */
export class UpdateSandboxNetworkDto extends EgressListsDto {
  @IsOptional()
  @IsBoolean()
  allow_internet_access?: boolean;
}

/** E2B's SandboxAutoResumeConfig. */
export class SandboxAutoResumeDto {
  @IsOptional()
  @IsBoolean()
  enabled?: boolean;
}

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

  /** E2B: whether the pause at timeout keeps memory (default true); false cannot be combined with autoResume. */
  @IsOptional()
  @IsBoolean()
  autoPauseMemory?: boolean;

  @IsOptional()
  @ValidateNested()
  @Type(() => SandboxAutoResumeDto)
  autoResume?: SandboxAutoResumeDto;

  /**
   * The SDK option's own shape (`{ onTimeout: 'kill' | 'pause' | { action, keepMemory }, autoResume }`), which the
   * SDKs turn into autoPause/autoPauseMemory/autoResume but hand-written clients may send; read by `lifecycleOf`.
   */
  @IsOptional()
  @IsObject()
  lifecycle?: Record<string, unknown>;

  /** Accepted and ignored, as E2B does: every sandbox's envd is secured with its own token. */
  @IsOptional()
  @IsBoolean()
  secure?: boolean;

  @IsOptional()
  @IsBoolean()
  allow_internet_access?: boolean;

  @IsOptional()
  @ValidateNested()
  @Type(() => SandboxNetworkDto)
  network?: SandboxNetworkDto;

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

  /** E2B: false resumes from disk only (a cold boot); refused unless the deployment implements it (Kiln does not). */
  @IsOptional()
  @IsBoolean()
  memory?: boolean;
}

/** Body of `POST /sandboxes/{id}/pause` (E2B's SandboxPauseRequest). */
export class PauseSandboxDto {
  /** Keep memory (default true); false keeps only the filesystem and the resume cold-boots. */
  @IsOptional()
  @IsBoolean()
  memory?: boolean;
}

/** Longest fork batch one request may ask for (E2B: 1..100). */
export const MAX_FORK_COUNT = 100;

/** Body of `POST /sandboxes/{id}/fork` (E2B's SandboxForkRequest). */
export class SandboxForkDto {
  @IsOptional()
  @IsInt()
  @Min(0)
  @Max(MAX_SANDBOX_TIMEOUT_SECONDS)
  timeout?: number;

  @IsOptional()
  @IsInt()
  @Min(1)
  @Max(MAX_FORK_COUNT)
  count?: number;
}

/** A snapshot's name: what `Sandbox.create(name)` resolves, so a template alias (no namespace, no tag). */
export const SNAPSHOT_NAME_PATTERN = /^[a-z0-9][a-z0-9._-]*$/;

/** Body of `POST /sandboxes/{id}/snapshots` (E2B's SandboxSnapshotRequest). */
export class SandboxSnapshotDto {
  @IsOptional()
  @IsString()
  @MinLength(1)
  @MaxLength(64)
  @Matches(SNAPSHOT_NAME_PATTERN, { message: 'name must be lowercase letters, digits, . _ - (starting with a letter or digit)' })
  name?: string;
}

/** Query of `GET /snapshots`. */
export class ListSnapshotsQueryDto {
  @IsOptional()
  @IsString()
  @MaxLength(64)
  sandboxID?: string;

  @IsOptional()
  @IsString()
  @MaxLength(200)
  name?: string;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(100)
  limit?: number;

  @IsOptional()
  @IsString()
  @MaxLength(512)
  nextToken?: string;
}

export const SANDBOX_ID_PATTERN = /^[a-z0-9]{1,64}$/;

/** E2B's page size for `GET /v2/sandboxes` (paginationLimit: default 100, maximum 100). */
export const SANDBOX_LIST_DEFAULT_LIMIT = 100;
export const SANDBOX_LIST_MAX_LIMIT = 100;

/**
 * An RFC 3339 date-time (`2024-05-01T12:00:00Z`, `…T12:00:00.123456+02:00`). The date and time ranges are checked
 * when it is parsed; this only decides the shape.
 */
export const RFC3339_DATE_TIME_PATTERN = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$/;

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

  /** By start time; E2B's default is desc (newest first). */
  @IsOptional()
  @IsIn(['asc', 'desc'], { message: 'order must be asc or desc' })
  order?: 'asc' | 'desc';

  /** Only sandboxes started at or after this time. */
  @IsOptional()
  @IsString()
  @MaxLength(64)
  @Matches(RFC3339_DATE_TIME_PATTERN, {
    message: "startedAfter must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z (a '+' in an offset must be sent as %2B)",
  })
  startedAfter?: string;

  /** A template id or alias (E2B: without a tag, since sandboxes are not tag-scoped). */
  @IsOptional()
  @IsString()
  @MaxLength(128)
  @Matches(TEMPLATE_REF_PATTERN, { message: 'template must be a template id or alias' })
  template?: string;

  @IsOptional()
  @IsString()
  @MaxLength(512)
  nextToken?: string;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(SANDBOX_LIST_MAX_LIMIT)
  limit?: number;
}
