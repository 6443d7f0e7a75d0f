import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';

/** E2B's TemplateRequestResponseV3 (`POST /v3/templates`). */
export class TemplateRequestResponseV3Body {
  @ApiProperty() templateID: string;
  @ApiProperty({ format: 'uuid' }) buildID: string;
  @ApiProperty() public: boolean;
  @ApiProperty({ type: [String] }) names: string[];
  @ApiProperty({ type: [String] }) tags: string[];
  @ApiProperty({ type: [String], deprecated: true }) aliases: string[];
}

/** E2B's TemplateBuildFileUpload. */
export class TemplateBuildFileUploadBody {
  @ApiProperty({ description: 'Whether the team uploaded these files before' }) present: boolean;
  @ApiPropertyOptional({ description: 'Where to PUT the tar(.gz) archive: this gateway, signed, valid 1 hour, no API key needed' }) url?: string;
}

/** E2B's BuildLogEntry. */
export class BuildLogEntryBody {
  @ApiProperty({ format: 'date-time' }) timestamp: string;
  @ApiProperty() message: string;
  @ApiProperty({ enum: ['debug', 'info', 'warn', 'error'] }) level: string;
  @ApiPropertyOptional({ description: '"0" base, "1".."N" steps, "N+1" finalize' }) step?: string;
}

/** E2B's BuildStatusReason. */
export class BuildStatusReasonBody {
  @ApiProperty() message: string;
  @ApiPropertyOptional() step?: string;
  @ApiProperty({ type: [BuildLogEntryBody] }) logEntries: BuildLogEntryBody[];
}

/** E2B's TemplateBuildInfo. */
export class TemplateBuildInfoBody {
  @ApiProperty() templateID: string;
  @ApiProperty({ format: 'uuid' }) buildID: string;
  @ApiProperty({ enum: ['building', 'waiting', 'ready', 'error'] }) status: string;
  @ApiProperty({ type: [String] }) logs: string[];
  @ApiProperty({ type: [BuildLogEntryBody] }) logEntries: BuildLogEntryBody[];
  @ApiPropertyOptional({ type: BuildStatusReasonBody }) reason?: BuildStatusReasonBody;
}

/** E2B's TemplateBuildLogsResponse. */
export class TemplateBuildLogsBody {
  @ApiProperty({ type: [BuildLogEntryBody] }) logs: BuildLogEntryBody[];
}

/** E2B's AssignedTemplateTags. */
export class AssignedTemplateTagsBody {
  @ApiProperty({ type: [String] }) tags: string[];
  @ApiProperty({ format: 'uuid' }) buildID: string;
}

/** E2B's TemplateTag. */
export class TemplateTagBody {
  @ApiProperty() tag: string;
  @ApiProperty({ format: 'uuid' }) buildID: string;
  @ApiProperty({ format: 'date-time' }) createdAt: string;
}
