import type { Readable } from 'node:stream';
import { Inject, Injectable, Logger } from '@nestjs/common';
import { ARTIFACT_STORE, ArtifactStore, ArtifactTooLargeError } from '@kiln/artifacts';
import { GatewayEnv, describeError } from '@kiln/config';
import { BuildState, KilnError, TemplateBuildDefinition } from '@kiln/contracts';
import { BuildLogRow, DEFAULT_TEMPLATE_TAG, IMPLICIT_TEMPLATE_TAGS, Prisma, TemplateAuthoringRepository, TemplateRepository } from '@kiln/db';
import { MessagingClient, Subjects } from '@kiln/messaging';
import { FILES_HASH_PATTERN, parseBuildDefinition, stepLabel } from './build-definition';
import { TemplateBuildQueue } from './template-build-queue';
import {
  AssignTemplateTagsDto,
  BUILD_LOGS_MAX_LIMIT,
  BuildLogsQueryDto,
  BuildStatusQueryDto,
  DeleteTemplateTagsDto,
  TEMPLATE_NAME_PATTERN,
  TemplateBuildRequestV3Dto,
} from './template-request.dto';
import {
  AssignedTemplateTagsBody,
  BuildLogEntryBody,
  TemplateBuildFileUploadBody,
  TemplateBuildInfoBody,
  TemplateRequestResponseV3Body,
  TemplateTagBody,
} from './template-build-responses';
import {
  BuildNotWaitingError,
  InvalidBuildDefinitionError,
  PublicTemplateDeleteError,
  TemplateInUseError,
  TemplateNameTakenError,
  UploadTokenRejectedError,
  UploadInterruptedError,
  UploadTooLargeError,
} from './templates.errors';
import { UploadTokens } from './upload-token';
import { e2bBuildStatus } from './template-responses';

/** The SDK's defaults when a create omits them (Template.build: cpuCount 2, memoryMB 1024). */
const DEFAULT_BUILD_VCPUS = 2;
const DEFAULT_BUILD_MEMORY_MIB = 1024;
/** Disk of a new build until its base is known (the schema's template default, as `base` ships). */
const DEFAULT_BUILD_DISK_MIB = 2048;
/** Log entries a failed build's reason carries (the failing step's last lines). */
const REASON_LOG_ENTRIES = 20;

function toLogEntry(row: BuildLogRow): BuildLogEntryBody {
  return { timestamp: row.timestamp.toISOString(), level: row.level, message: row.message, ...(row.step !== null ? { step: row.step } : {}) };
}

/** E2B's `logs` (plain lines) next to `logEntries`. */
function formatLogLine(row: BuildLogRow): string {
  return `[${row.timestamp.toISOString()}] ${row.message}`;
}

/** `name:tag` → [name, tag]; a name alone → [name, undefined]. */
export function splitNameTag(ref: string): [string, string | undefined] {
  const colon = ref.indexOf(':');
  return colon < 0 ? [ref, undefined] : [ref.slice(0, colon), ref.slice(colon + 1)];
}

/**
 * E2B's template build API for a team's own templates: create a build, upload its COPY archives, start it, read its
 * status and logs, tag builds, cancel builds and delete templates. The template builder (apps/template-builder)
 * runs the builds this enqueues; another team's template is not found (404), never forbidden.
 */
@Injectable()
export class TemplateBuildsService {
  private readonly logger = new Logger(TemplateBuildsService.name);
  private readonly uploadTokens: UploadTokens;

  constructor(
    private readonly env: GatewayEnv,
    private readonly authoring: TemplateAuthoringRepository,
    private readonly templates: TemplateRepository,
    private readonly queue: TemplateBuildQueue,
    private readonly messaging: MessagingClient,
    @Inject(ARTIFACT_STORE) private readonly artifacts: ArtifactStore,
  ) {
    this.uploadTokens = new UploadTokens(env.KILN_SANDBOX_TOKEN_KEY);
    if (!env.KILN_SANDBOX_TOKEN_KEY) {
      this.logger.warn('KILN_SANDBOX_TOKEN_KEY is not set: template upload URLs are signed with a key of this process only');
    }
  }

  /** `POST /v3/templates`. */
  async requestBuild(teamId: string, body: TemplateBuildRequestV3Dto): Promise<TemplateRequestResponseV3Body> {
    const given = body.name ?? body.alias;
    if (!given) throw KilnError.invalid('name is required (name or name:tag)');
    const [alias, nameTag] = splitNameTag(given);
    if (!TEMPLATE_NAME_PATTERN.test(alias)) {
      throw KilnError.invalid(`name '${alias.slice(0, 140)}' must be 1-128 letters, digits, ".", "_" or "-" (no namespace)`);
    }
    if (nameTag !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(nameTag)) {
      throw KilnError.invalid(`tag '${nameTag.slice(0, 140)}' in the name must be 1-128 letters, digits, ".", "_" or "-"`);
    }
    const tags = [...new Set([...(nameTag !== undefined ? [nameTag] : []), ...(body.tags ?? [])])];
    const outcome = await this.authoring.requestBuild({
      teamId,
      alias,
      vcpus: body.cpuCount ?? DEFAULT_BUILD_VCPUS,
      memoryMib: body.memoryMB ?? DEFAULT_BUILD_MEMORY_MIB,
      diskMib: DEFAULT_BUILD_DISK_MIB,
      tags,
    });
    if (outcome.kind === 'taken') throw new TemplateNameTakenError(alias, outcome.holder.teamId === teamId && outcome.holder.isSnapshot);
    return {
      templateID: outcome.templateId,
      buildID: outcome.buildId,
      public: false,
      names: outcome.aliases,
      aliases: outcome.aliases,
      // E2B: a build requested without tags is the template's `default`.
      tags: tags.length > 0 ? tags : [DEFAULT_TEMPLATE_TAG],
    };
  }

  /** The team's built template by id or alias (`name:tag` names the template), or 404. */
  private async teamTemplate(teamId: string, ref: string) {
    const [name] = splitNameTag(ref);
    const template = await this.authoring.findTeamTemplate(name, teamId);
    if (!template) throw KilnError.notFound(`template ${ref}`);
    return template;
  }

  private async teamBuild(teamId: string, templateRef: string, buildId: string) {
    const template = await this.teamTemplate(teamId, templateRef);
    const build = isUuid(buildId) ? await this.authoring.findBuild(template.id, buildId) : null;
    if (!build) throw KilnError.notFound(`build ${buildId} of template ${templateRef}`);
    return { template, build };
  }

  /** `GET /templates/{templateID}/files/{hash}`: present, or a signed URL of this gateway to PUT the archive to. */
  async fileUploadLink(teamId: string, templateRef: string, hash: string, baseUrl: string): Promise<TemplateBuildFileUploadBody> {
    if (!FILES_HASH_PATTERN.test(hash)) throw KilnError.invalid('hash must be the files hash the SDK computed (letters, digits, "_", "-")');
    const template = await this.teamTemplate(teamId, templateRef);
    if (await this.authoring.uploadedFile(teamId, hash)) return { present: true };
    const token = this.uploadTokens.sign({ teamId, templateId: template.id, hash });
    const url = `${baseUrl}/templates/${encodeURIComponent(template.id)}/files/${encodeURIComponent(hash)}?token=${encodeURIComponent(token)}`;
    return { present: false, url };
  }

  /**
   * `PUT /templates/{templateID}/files/{hash}?token=…`: streams the archive into the artifact store
   * (`files/<teamId>/<hash>`) and records it. The token is the only authority (the SDK sends no API key).
   */
  async storeUpload(templateId: string, hash: string, token: unknown, body: Readable, contentLength: number | undefined): Promise<void> {
    const grant = FILES_HASH_PATTERN.test(hash) ? this.uploadTokens.verify(token, templateId, hash) : undefined;
    if (!grant) throw new UploadTokenRejectedError();
    const limit = this.env.TEMPLATE_UPLOAD_MAX_BYTES;
    if (contentLength !== undefined && contentLength > limit) throw new UploadTooLargeError(limit);
    let stored;
    try {
      stored = await this.artifacts.write(`files/${grant.teamId}/${hash}`, body, { maxBytes: limit });
    } catch (error) {
      if (error instanceof ArtifactTooLargeError) throw new UploadTooLargeError(limit);
      // The client went away (or sent less than its Content-Length): nothing was stored.
      if (!(error instanceof KilnError) && (body.destroyed || !body.readableEnded)) throw new UploadInterruptedError();
      throw error;
    }
    await this.authoring.recordUploadedFile(grant.teamId, hash, stored.sha256, stored.bytes);
  }

  /**
   * `POST /v2/templates/{templateID}/builds/{buildID}`: validates the definition (400 naming the step), resolves its
   * references (uploaded archives, the base template's ready build), stores it and enqueues the build.
   */
  async startBuild(teamId: string, templateRef: string, buildId: string, body: unknown): Promise<void> {
    const { template, build } = await this.teamBuild(teamId, templateRef, buildId);
    if (build.state !== BuildState.Waiting || build.definition !== null) throw new BuildNotWaitingError(build.id, build.state);
    const parsed = parseBuildDefinition(body);
    const definition: TemplateBuildDefinition = { ...parsed };
    let diskMib: number | undefined;

    if (parsed.fromTemplate !== undefined) {
      const base = await this.templates.resolve(parsed.fromTemplate, teamId);
      if (!base) throw new InvalidBuildDefinitionError(`fromTemplate '${parsed.fromTemplate}': no such template`);
      if (base.snapshot) throw new InvalidBuildDefinitionError(`fromTemplate '${parsed.fromTemplate}' is a snapshot; build from a template`);
      if (!base.buildId || !base.hostBuildId) throw new InvalidBuildDefinitionError(`fromTemplate '${parsed.fromTemplate}' has no ready build`);
      definition.baseTemplate = { templateId: base.templateId, buildId: base.buildId, hostBuildId: base.hostBuildId };
      // The build's disk is at least its base's.
      if (base.diskMib > build.diskMib) diskMib = base.diskMib;
    }

    for (const [index, step] of definition.steps.entries()) {
      if (step.type !== 'COPY' || !step.filesHash) continue;
      const file = await this.authoring.uploadedFile(teamId, step.filesHash);
      if (!file) {
        throw new InvalidBuildDefinitionError(
          `${stepLabel(index, 'COPY')}: the files of '${step.args[0]}' (filesHash ${step.filesHash}) were never uploaded; ` +
            `upload them through GET /templates/${template.id}/files/${step.filesHash} first`,
        );
      }
      step.filesSha256 = file.sha256;
    }

    const stored = await this.authoring.storeDefinition(build.id, {
      definition: definition as unknown as Prisma.InputJsonValue,
      startCmd: definition.startCmd,
      readyCmd: definition.readyCmd,
      diskMib,
    });
    if (!stored) {
      const now = await this.authoring.findBuild(template.id, build.id);
      throw new BuildNotWaitingError(build.id, now?.state ?? 'deleted');
    }
    try {
      await this.queue.enqueue(build.id);
    } catch (error) {
      // Nothing runs the build: undo the start so the client can retry it.
      await this.authoring.forgetDefinition(build.id).catch((undo) => this.logger.error(`build ${build.id}: could not undo the start: ${describeError(undo)}`));
      throw error;
    }
  }

  /** `GET /templates/{templateID}/builds/{buildID}/status`. */
  async status(teamId: string, templateRef: string, buildId: string, query: BuildStatusQueryDto): Promise<TemplateBuildInfoBody> {
    const { template, build } = await this.teamBuild(teamId, templateRef, buildId);
    const rows = await this.authoring.logsFromOffset(build.id, {
      offset: query.logsOffset ?? 0,
      limit: query.limit ?? BUILD_LOGS_MAX_LIMIT,
      level: query.level,
    });
    const info: TemplateBuildInfoBody = {
      templateID: template.id,
      buildID: build.id,
      status: e2bBuildStatus(build),
      logs: rows.map(formatLogLine),
      logEntries: rows.map(toLogEntry),
    };
    if (build.state === BuildState.Error) {
      const stepRows = build.reasonStep ? await this.authoring.lastLogsOfStep(build.id, build.reasonStep, REASON_LOG_ENTRIES) : [];
      info.reason = {
        message: build.reason ?? 'the build failed',
        ...(build.reasonStep ? { step: build.reasonStep } : {}),
        logEntries: stepRows.map(toLogEntry),
      };
    }
    return info;
  }

  /** `GET /templates/{templateID}/builds/{buildID}/logs`. */
  async logs(teamId: string, templateRef: string, buildId: string, query: BuildLogsQueryDto): Promise<{ logs: BuildLogEntryBody[] }> {
    const { build } = await this.teamBuild(teamId, templateRef, buildId);
    const rows = await this.authoring.logsFromCursor(build.id, {
      cursor: query.cursor !== undefined ? new Date(query.cursor) : undefined,
      limit: query.limit ?? BUILD_LOGS_MAX_LIMIT,
      direction: query.direction ?? 'forward',
      level: query.level,
    });
    return { logs: rows.map(toLogEntry) };
  }

  /** `POST /templates/tags`: the target's build (its tag's, or the newest ready one) gets the tags. */
  async assignTags(teamId: string, body: AssignTemplateTagsDto): Promise<AssignedTemplateTagsBody> {
    const [name, tag] = splitNameTag(body.target);
    const template = await this.teamTemplate(teamId, name);
    const tagged = tag !== undefined ? await this.authoring.taggedBuild(template.id, tag) : null;
    if (tag !== undefined && !IMPLICIT_TEMPLATE_TAGS.includes(tag) && !tagged) throw KilnError.notFound(`tag ${tag} of template ${name}`);
    const build = tagged ?? (await this.authoring.newestReadyBuild(template.id));
    if (!build) throw KilnError.notFound(`a ready build of template ${name}`);
    const tags = [...new Set(body.tags)];
    await this.authoring.assignTags(template.id, build.id, tags);
    return { tags, buildID: build.id };
  }

  /** `DELETE /templates/tags`: 404 when none of the tags existed. */
  async removeTags(teamId: string, body: DeleteTemplateTagsDto): Promise<void> {
    const template = await this.teamTemplate(teamId, body.name);
    const removed = await this.authoring.removeTags(template.id, [...new Set(body.tags)]);
    if (removed === 0) throw KilnError.notFound(`tags ${body.tags.join(', ')} of template ${body.name}`);
  }

  /** `GET /templates/{templateID}/tags`. */
  async listTags(teamId: string, templateRef: string): Promise<TemplateTagBody[]> {
    const template = await this.teamTemplate(teamId, templateRef);
    const rows = await this.authoring.listTags(template.id);
    return rows.map((r) => ({ tag: r.tag, buildID: r.buildId, createdAt: r.createdAt.toISOString() }));
  }

  /** Kiln's `DELETE /templates/{templateID}/builds/{buildID}`: asks the builder to stop an unfinished build. */
  async cancelBuild(teamId: string, templateRef: string, buildId: string): Promise<void> {
    const { build } = await this.teamBuild(teamId, templateRef, buildId);
    if (!(await this.authoring.requestCancel(build.id))) throw new BuildNotWaitingError(build.id, build.state);
    await this.publishCancel(build.id);
  }

  /**
   * `DELETE /templates/{templateID}` of a built template: true when the team had one by that id or name (deleted),
   * false when it has none (the caller then tries it as a snapshot). 409 while sandboxes or snapshots use it.
   */
  async deleteTemplate(teamId: string, ref: string): Promise<boolean> {
    const [name] = splitNameTag(ref);
    const template = await this.authoring.findTeamTemplate(name, teamId);
    if (!template) return false;
    const uses = await this.authoring.referencesOf(template.id);
    if (uses.sandboxes > 0 || uses.snapshots > 0) throw new TemplateInUseError(template.id, uses);
    for (const build of await this.authoring.unfinishedBuilds(template.id)) {
      await this.authoring.requestCancel(build.id);
      await this.publishCancel(build.id);
    }
    await this.authoring.deleteTemplate(template.id);
    await this.artifacts.removePrefix(`templates/${template.id}/`);
    return true;
  }

  /** A public platform template the team asked to delete: 403 (it may see it, not delete it); otherwise nothing. */
  async refusePublicDelete(teamId: string, ref: string): Promise<void> {
    const [name] = splitNameTag(ref);
    const visible = await this.templates.findVisible(name, teamId);
    if (visible?.public && visible.teamId !== teamId) throw new PublicTemplateDeleteError(ref);
  }

  private async publishCancel(buildId: string): Promise<void> {
    // Fire-and-forget: cancel_requested is the record; a builder that misses the message sees the flag.
    await this.messaging
      .emit(Subjects.templateBuildCancel, { buildId })
      .catch((error) => this.logger.warn(`build ${buildId}: cancel not published: ${describeError(error)}`));
  }
}

function isUuid(value: string): boolean {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value);
}
