import { Injectable } from '@nestjs/common';
import { PrismaService } from '@kiln/db';
import type { Prisma } from '@kiln/db';
import {
  BuildState,
  TemplateBuildArtifact,
  TemplateBuildDefinition,
  TemplateBuildLogEntry,
  TemplateBuildRuntime,
} from '@kiln/contracts';

/** A build as the runner needs it: its row, its template's team and the team's uploaded archive records. */
export interface StoredBuild {
  id: string;
  templateId: string;
  /** Null for a public (platform) template. */
  teamId: string | null;
  state: BuildState;
  definition: TemplateBuildDefinition | null;
  vcpus: number;
  memoryMib: number;
  diskMib: number;
  cancelRequested: boolean;
}

/** What a host reported for a ready build. */
export interface ReadyBuild {
  hostId: string;
  diskMib: number;
  envdVersion: string;
  vcpus?: number;
  memoryMib?: number;
  runtime: TemplateBuildRuntime;
  artifacts: TemplateBuildArtifact[];
  startCmd?: string;
  readyCmd?: string;
}

/** The tag every build without an explicit tag gets (E2B: `name` is `name:default`). */
export const DEFAULT_TAG = 'default';

/** The build states a build job may still move out of; ready and error are final. */
const OPEN_STATES = [BuildState.Waiting, BuildState.Building];

/**
 * The template builder's reads and writes of `template_builds` and `template_build_logs`. Every state change is
 * conditional on the build still being open, so a build someone else ended (the gateway failing a cancelled
 * build that never started) is never reopened.
 */
@Injectable()
export class TemplateBuildStore {
  constructor(private readonly prisma: PrismaService) {}

  async load(buildId: string): Promise<StoredBuild | undefined> {
    const row = await this.prisma.templateBuild.findUnique({ where: { id: buildId }, include: { template: { select: { teamId: true } } } });
    if (!row) return undefined;
    return {
      id: row.id,
      templateId: row.templateId,
      teamId: row.template.teamId,
      state: row.state as BuildState,
      definition: (row.definition as unknown as TemplateBuildDefinition | null) ?? null,
      vcpus: row.vcpus,
      memoryMib: row.memoryMib,
      diskMib: row.diskMib,
      cancelRequested: row.cancelRequested,
    };
  }

  async cancelRequested(buildId: string): Promise<boolean> {
    const row = await this.prisma.templateBuild.findUnique({ where: { id: buildId }, select: { cancelRequested: true } });
    return row?.cancelRequested ?? false;
  }

  /** The sha256 the team's uploaded archive was stored with (`template_files`), if it was. */
  async filesSha256(teamId: string, filesHash: string): Promise<string | undefined> {
    const row = await this.prisma.templateFile.findUnique({ where: { teamId_filesHash: { teamId, filesHash } }, select: { sha256: true } });
    return row?.sha256;
  }

  /** The host that built the template's newest ready build (its step cache is there), if any. */
  async lastBuildHost(templateId: string): Promise<string | undefined> {
    const row = await this.prisma.templateBuild.findFirst({
      where: { templateId, state: BuildState.Ready, builtOnHostId: { not: null } },
      orderBy: { createdAt: 'desc' },
      select: { builtOnHostId: true },
    });
    return row?.builtOnHostId ?? undefined;
  }

  /** waiting → building; false when the build is no longer open. startedAt is kept from a first attempt. */
  async markBuilding(buildId: string): Promise<boolean> {
    const { count } = await this.prisma.templateBuild.updateMany({
      where: { id: buildId, state: { in: OPEN_STATES } },
      data: { state: BuildState.Building },
    });
    if (count === 1) await this.prisma.templateBuild.updateMany({ where: { id: buildId, startedAt: null }, data: { startedAt: new Date() } });
    return count === 1;
  }

  /**
   * building → ready with what the host reported; the host build id (contentHash) is the build id. The template's
   * `default` tag moves to it unless the build carries tags of its own without `default` (E2B: building `name:v2`
   * tags only v2).
   */
  async markReady(buildId: string, ready: ReadyBuild): Promise<boolean> {
    return this.prisma.$transaction(async (tx) => {
      const { count } = await tx.templateBuild.updateMany({
        where: { id: buildId, state: { in: OPEN_STATES } },
        data: {
          state: BuildState.Ready,
          finishedAt: new Date(),
          contentHash: buildId,
          diskMib: ready.diskMib,
          envdVersion: ready.envdVersion || null,
          ...(ready.vcpus ? { vcpus: ready.vcpus } : {}),
          ...(ready.memoryMib ? { memoryMib: ready.memoryMib } : {}),
          runtime: ready.runtime as unknown as Prisma.InputJsonValue,
          artifacts: ready.artifacts as unknown as Prisma.InputJsonValue,
          startCmd: ready.startCmd || null,
          readyCmd: ready.readyCmd || null,
          builtOnHostId: ready.hostId,
          reason: null,
          reasonStep: null,
        },
      });
      if (count !== 1) return false;
      const build = await tx.templateBuild.findUniqueOrThrow({ where: { id: buildId }, select: { templateId: true, tags: { select: { tag: true } } } });
      const ownTags = build.tags.map((t) => t.tag);
      if (ownTags.length === 0 || ownTags.includes(DEFAULT_TAG)) {
        await tx.templateTag.upsert({
          where: { templateId_tag: { templateId: build.templateId, tag: DEFAULT_TAG } },
          update: { buildId },
          create: { templateId: build.templateId, tag: DEFAULT_TAG, buildId },
        });
      }
      return true;
    });
  }

  /** → error with the reason and the failing step; false when the build is no longer open. */
  async markError(buildId: string, reason: string, step?: string): Promise<boolean> {
    const { count } = await this.prisma.templateBuild.updateMany({
      where: { id: buildId, state: { in: OPEN_STATES } },
      data: { state: BuildState.Error, finishedAt: new Date(), reason, reasonStep: step ?? null },
    });
    return count === 1;
  }

  /** The seq the build's next log entry gets (after an earlier attempt's). */
  async nextLogSeq(buildId: string): Promise<number> {
    const last = await this.prisma.templateBuildLog.findFirst({ where: { buildId }, orderBy: { seq: 'desc' }, select: { seq: true } });
    return last ? last.seq + 1 : 0;
  }

  async appendLogs(buildId: string, entries: readonly TemplateBuildLogEntry[]): Promise<void> {
    if (!entries.length) return;
    await this.prisma.templateBuildLog.createMany({
      data: entries.map((e) => ({ buildId, seq: e.seq, timestamp: new Date(e.timestamp), level: e.level, message: e.message, step: e.step ?? null })),
      skipDuplicates: true,
    });
  }
}
