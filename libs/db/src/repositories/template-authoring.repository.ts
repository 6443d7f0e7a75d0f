import { randomInt } from 'node:crypto';
import { Injectable } from '@nestjs/common';
import { Prisma } from '@prisma/client';
import { BuildState, TERMINAL_SANDBOX_STATES } from '@kiln/contracts';
import { PrismaService } from '../prisma.service';

/** E2B's template ids: 20 characters of [a-z0-9]. */
export function newTemplateId(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let id = '';
  for (let i = 0; i < 20; i++) id += alphabet[randomInt(alphabet.length)];
  return id;
}

/** Who holds an alias (aliases are global: one template per name across teams). */
export interface AliasHolder {
  templateId: string;
  teamId: string | null;
  public: boolean;
  isSnapshot: boolean;
}

export interface NewBuildRequest {
  teamId: string;
  alias: string;
  vcpus: number;
  memoryMib: number;
  diskMib: number;
  tags: string[];
}

export type NewBuildOutcome =
  | { kind: 'created'; templateId: string; buildId: string; aliases: string[] }
  /** The alias belongs to another team, to a public template or to one of the team's snapshots. */
  | { kind: 'taken'; holder: AliasHolder };

export interface BuildLogRow {
  seq: number;
  timestamp: Date;
  level: string;
  message: string;
  step: string | null;
}

/** Log levels in increasing severity (E2B LogLevel); a `level` filter keeps that level and above. */
export const BUILD_LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type BuildLogLevel = (typeof BUILD_LOG_LEVELS)[number];

function levelsFrom(level: BuildLogLevel | undefined): string[] | undefined {
  return level ? BUILD_LOG_LEVELS.slice(BUILD_LOG_LEVELS.indexOf(level)) : undefined;
}

/** Build states a build can still leave (a cancellation has something to stop). */
const UNFINISHED_BUILD_STATES = [BuildState.Waiting, BuildState.Building];

/**
 * What the gateway's template-build API writes and reads: a team's built templates (never snapshots, which
 * NamedSnapshotRepository owns), their builds, uploaded build-context archives, build logs and tags.
 */
@Injectable()
export class TemplateAuthoringRepository {
  constructor(private readonly prisma: PrismaService) {}

  async aliasHolder(alias: string): Promise<AliasHolder | null> {
    const row = await this.prisma.templateAlias.findUnique({ where: { alias }, include: { template: true } });
    if (!row) return null;
    return { templateId: row.templateId, teamId: row.template.teamId, public: row.template.public, isSnapshot: row.template.isSnapshot };
  }

  /**
   * E2B `POST /v3/templates`: the team's template named `alias` (made, with a new id, when the name is free) and a new
   * `waiting` build of it, which `tags` then point at. A concurrent create of the same new name retries once and
   * reuses the template the other made.
   */
  async requestBuild(input: NewBuildRequest): Promise<NewBuildOutcome> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.prisma.$transaction(async (tx) => {
          const existing = await tx.templateAlias.findUnique({ where: { alias: input.alias }, include: { template: true } });
          let templateId: string;
          if (existing) {
            const t = existing.template;
            if (t.teamId !== input.teamId || t.public || t.isSnapshot) {
              return { kind: 'taken' as const, holder: { templateId: t.id, teamId: t.teamId, public: t.public, isSnapshot: t.isSnapshot } };
            }
            templateId = t.id;
            await tx.template.update({ where: { id: templateId }, data: { vcpus: input.vcpus, memoryMib: input.memoryMib } });
          } else {
            templateId = newTemplateId();
            await tx.template.create({
              data: {
                id: templateId,
                teamId: input.teamId,
                public: false,
                vcpus: input.vcpus,
                memoryMib: input.memoryMib,
                diskMib: input.diskMib,
                aliases: { create: { alias: input.alias } },
              },
            });
          }
          const build = await tx.templateBuild.create({
            data: { templateId, state: BuildState.Waiting, vcpus: input.vcpus, memoryMib: input.memoryMib, diskMib: input.diskMib },
          });
          for (const tag of input.tags) {
            await tx.templateTag.upsert({
              where: { templateId_tag: { templateId, tag } },
              update: { buildId: build.id, createdAt: new Date() },
              create: { templateId, tag, buildId: build.id },
            });
          }
          const aliases = await tx.templateAlias.findMany({ where: { templateId }, select: { alias: true }, orderBy: { createdAt: 'asc' } });
          return { kind: 'created' as const, templateId, buildId: build.id, aliases: aliases.map((a) => a.alias) };
        });
      } catch (error) {
        // Two creates of one new name: the loser's alias insert hits the primary key; the retry finds the winner's.
        if (attempt === 0 && error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2002') continue;
        throw error;
      }
    }
  }

  /** A built (non-snapshot) template of the team, by id or alias, with its aliases; null when it has none such. */
  async findTeamTemplate(ref: string, teamId: string) {
    const alias = await this.prisma.templateAlias.findUnique({ where: { alias: ref }, select: { templateId: true } });
    return this.prisma.template.findFirst({
      where: { id: alias?.templateId ?? ref, teamId, isSnapshot: false },
      include: { aliases: { orderBy: { createdAt: 'asc' } } },
    });
  }

  /** One build of a template, or null when the build is another template's. */
  findBuild(templateId: string, buildId: string) {
    return this.prisma.templateBuild.findFirst({ where: { id: buildId, templateId } });
  }

  /** The newest ready build of a template, or null. */
  newestReadyBuild(templateId: string) {
    return this.prisma.templateBuild.findFirst({ where: { templateId, state: BuildState.Ready }, orderBy: [{ createdAt: 'desc' }, { id: 'desc' }] });
  }

  /** The build a tag points at, or null. */
  async taggedBuild(templateId: string, tag: string) {
    const row = await this.prisma.templateTag.findUnique({ where: { templateId_tag: { templateId, tag } }, include: { build: true } });
    return row?.build ?? null;
  }

  uploadedFile(teamId: string, filesHash: string) {
    return this.prisma.templateFile.findUnique({ where: { teamId_filesHash: { teamId, filesHash } } });
  }

  async recordUploadedFile(teamId: string, filesHash: string, sha256: string, bytes: number): Promise<void> {
    await this.prisma.templateFile.upsert({
      where: { teamId_filesHash: { teamId, filesHash } },
      update: { sha256, bytes: BigInt(bytes), createdAt: new Date() },
      create: { teamId, filesHash, sha256, bytes: BigInt(bytes) },
    });
  }

  /**
   * Stores the validated definition of a `waiting` build that has none yet. False when the build was started
   * already (or left `waiting`): a build is started once.
   */
  async storeDefinition(
    buildId: string,
    input: { definition: Prisma.InputJsonValue; startCmd?: string; readyCmd?: string; diskMib?: number },
  ): Promise<boolean> {
    const updated = await this.prisma.templateBuild.updateMany({
      where: { id: buildId, state: BuildState.Waiting, definition: { equals: Prisma.AnyNull } },
      data: {
        definition: input.definition,
        startCmd: input.startCmd ?? null,
        readyCmd: input.readyCmd ?? null,
        ...(input.diskMib !== undefined ? { diskMib: input.diskMib } : {}),
      },
    });
    return updated.count === 1;
  }

  /** Undoes storeDefinition of a build nothing was enqueued for, so the start can be retried. */
  async forgetDefinition(buildId: string): Promise<void> {
    await this.prisma.templateBuild.updateMany({
      where: { id: buildId, state: BuildState.Waiting },
      data: { definition: Prisma.DbNull, startCmd: null, readyCmd: null },
    });
  }

  /** Entries of a build's log from position `offset` (E2B logsOffset), in order. */
  logsFromOffset(buildId: string, page: { offset: number; limit: number; level?: BuildLogLevel }): Promise<BuildLogRow[]> {
    const levels = levelsFrom(page.level);
    return this.prisma.templateBuildLog.findMany({
      where: { buildId, ...(levels ? { level: { in: levels } } : {}) },
      orderBy: { seq: 'asc' },
      skip: page.offset,
      take: page.limit,
      select: { seq: true, timestamp: true, level: true, message: true, step: true },
    });
  }

  /**
   * Entries of a build's log from a timestamp (E2B `cursor`, ms): forward takes those at or after it, oldest first;
   * backward those at or before it, newest first.
   */
  logsFromCursor(
    buildId: string,
    page: { cursor?: Date; limit: number; direction: 'forward' | 'backward'; level?: BuildLogLevel },
  ): Promise<BuildLogRow[]> {
    const levels = levelsFrom(page.level);
    const forward = page.direction === 'forward';
    return this.prisma.templateBuildLog.findMany({
      where: {
        buildId,
        ...(levels ? { level: { in: levels } } : {}),
        ...(page.cursor ? { timestamp: forward ? { gte: page.cursor } : { lte: page.cursor } } : {}),
      },
      orderBy: { seq: forward ? 'asc' : 'desc' },
      take: page.limit,
      select: { seq: true, timestamp: true, level: true, message: true, step: true },
    });
  }

  /** The last entries of one step's log (what a failed build's reason carries). */
  async lastLogsOfStep(buildId: string, step: string, limit: number): Promise<BuildLogRow[]> {
    const rows = await this.prisma.templateBuildLog.findMany({
      where: { buildId, step },
      orderBy: { seq: 'desc' },
      take: limit,
      select: { seq: true, timestamp: true, level: true, message: true, step: true },
    });
    return rows.reverse();
  }

  /** Points each tag at the build (moving it from the build it named before). */
  async assignTags(templateId: string, buildId: string, tags: string[]): Promise<void> {
    await this.prisma.$transaction(
      tags.map((tag) =>
        this.prisma.templateTag.upsert({
          where: { templateId_tag: { templateId, tag } },
          update: { buildId, createdAt: new Date() },
          create: { templateId, tag, buildId },
        }),
      ),
    );
  }

  /** Removes the tags; the number removed. */
  async removeTags(templateId: string, tags: string[]): Promise<number> {
    return (await this.prisma.templateTag.deleteMany({ where: { templateId, tag: { in: tags } } })).count;
  }

  listTags(templateId: string) {
    return this.prisma.templateTag.findMany({ where: { templateId }, orderBy: [{ createdAt: 'asc' }, { tag: 'asc' }] });
  }

  /** Builds of a template that can still leave waiting/building. */
  unfinishedBuilds(templateId: string) {
    return this.prisma.templateBuild.findMany({ where: { templateId, state: { in: UNFINISHED_BUILD_STATES } }, select: { id: true } });
  }

  /** Marks the build for cancellation if it is unfinished; false when it had already finished. */
  async requestCancel(buildId: string): Promise<boolean> {
    const updated = await this.prisma.templateBuild.updateMany({
      where: { id: buildId, state: { in: UNFINISHED_BUILD_STATES } },
      data: { cancelRequested: true },
    });
    return updated.count === 1;
  }

  /**
   * What still uses a template's builds: sandboxes from it that have not ended (paused ones included) and snapshots
   * of it (pause snapshots, named snapshots whose sandbox came from it).
   */
  async referencesOf(templateId: string): Promise<{ sandboxes: number; snapshots: number }> {
    const [sandboxes, snapshots] = await Promise.all([
      this.prisma.sandbox.count({ where: { templateId, state: { notIn: [...TERMINAL_SANDBOX_STATES] } } }),
      this.prisma.snapshot.count({
        where: { OR: [{ build: { templateId } }, { manifest: { path: ['hostTemplateId'], equals: templateId } }] },
      }),
    ]);
    return { sandboxes, snapshots };
  }

  /** Deletes a built template with its aliases, builds, logs and tags (cascade). */
  async deleteTemplate(templateId: string): Promise<void> {
    await this.prisma.template.deleteMany({ where: { id: templateId, isSnapshot: false } });
  }
}
