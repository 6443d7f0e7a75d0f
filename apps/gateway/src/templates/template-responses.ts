import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { ENVD_COMPAT_VERSION } from '@kiln/contracts';
import type { TemplateRepository } from '@kiln/db';

type VisibleTemplate = Awaited<ReturnType<TemplateRepository['listVisible']>>[number];

/** E2B's `Template`. */
export class TemplateBody {
  @ApiProperty() templateID: string;
  @ApiProperty({ description: 'Latest build (empty when the template was never built)' }) buildID: string;
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
  @ApiProperty({ description: 'Builds known for this template (Kiln reports whether the latest exists)' }) buildCount: number;
  @ApiProperty() envdVersion: string;
  @ApiProperty({ enum: ['building', 'waiting', 'ready', 'error'] }) buildStatus: string;
}

/** E2B's `TemplateAliasResponse`. */
export class TemplateAliasBody {
  @ApiProperty() templateID: string;
  @ApiProperty() public: boolean;
}

export function toTemplateBody(template: VisibleTemplate): TemplateBody {
  const latest = template.builds[0];
  const aliases = template.aliases.map((a) => a.alias);
  return {
    templateID: template.id,
    buildID: latest?.id ?? '',
    cpuCount: latest?.vcpus ?? template.vcpus,
    memoryMB: latest?.memoryMib ?? template.memoryMib,
    diskSizeMB: latest?.diskMib ?? template.diskMib,
    public: template.public,
    aliases,
    names: aliases,
    createdAt: template.createdAt.toISOString(),
    updatedAt: template.updatedAt.toISOString(),
    createdBy: null,
    lastSpawnedAt: null,
    spawnCount: 0,
    buildCount: template.builds.length,
    envdVersion: latest?.envdVersion ?? ENVD_COMPAT_VERSION,
    buildStatus: latest?.state ?? 'waiting',
  };
}
