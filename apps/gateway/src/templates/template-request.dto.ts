import { Type } from 'class-transformer';
import { IsInt, IsOptional, IsString, Max, MaxLength, Min } from 'class-validator';

/** E2B's paginationLimit for a template's builds: default 100, maximum 100. */
export const TEMPLATE_BUILDS_MAX_LIMIT = 100;

/** Query of `GET /templates/{templateID}`: a page of the template's builds. */
export class TemplateBuildsQueryDto {
  @IsOptional() @Type(() => Number) @IsInt() @Min(1) @Max(TEMPLATE_BUILDS_MAX_LIMIT)
  limit?: number;

  @IsOptional() @IsString() @MaxLength(512)
  nextToken?: string;
}
