import { Injectable } from '@nestjs/common';
import { BuildState } from '@kiln/contracts';
import { PrismaService } from '../prisma.service';

/** Where a named snapshot's artifacts are, as its host reported them (CreateSnapshot's SnapshotInfo). */
export interface HostSnapshotLocation {
  /** The host's id for the snapshot (CreateSnapshotRequest.snapshot_id). */
  snapshotId: string;
  hostId: string;
  /** The template build the snapshot's memory is based on, as the host names them: what CreateSandbox is sent. */
  hostTemplateId: string;
  hostBuildId: string;
}

export interface NewNamedSnapshot {
  teamId: string;
  sourceSandboxId: string;
  /** An existing snapshot template of the team that gets this snapshot as its new build (E2B: same name, new build). */
  existingTemplateId?: string;
  /** For a new template: its id and optional alias. */
  templateId: string;
  alias?: string;
  /** The build id, which is also the host's snapshot id. */
  buildId: string;
  hostId: string;
  hostTemplateId: string;
  hostBuildId: string;
  vcpus: number;
  memoryMib: number;
  diskMib: number;
  envdVersion?: string;
  sizeBytes: number;
  manifestSha256: string;
}

export interface NamedSnapshotRow {
  templateId: string;
  aliases: string[];
  createdAt: Date;
}

/**
 * Named snapshots (E2B's POST /sandboxes/{id}/snapshots): a snapshot is a template of its team (`is_snapshot`) with
 * one ready build per snapshot, so `Sandbox.create(snapshotId)` resolves it like any template; the build's artifacts
 * live on one host, recorded as a `snapshots` row (kind template) whose path is the host's snapshot id.
 */
@Injectable()
export class NamedSnapshotRepository {
  constructor(private readonly prisma: PrismaService) {}

  /** The template an alias names, whoever owns it (for a name collision check). */
  async aliasOwner(alias: string): Promise<{ templateId: string; teamId: string | null; isSnapshot: boolean } | null> {
    const row = await this.prisma.templateAlias.findUnique({ where: { alias }, include: { template: true } });
    return row ? { templateId: row.templateId, teamId: row.template.teamId, isSnapshot: row.template.isSnapshot } : null;
  }

  async record(input: NewNamedSnapshot): Promise<{ templateId: string; aliases: string[] }> {
    return this.prisma.$transaction(async (tx) => {
      let templateId = input.existingTemplateId;
      if (!templateId) {
        templateId = input.templateId;
        await tx.template.create({
          data: {
            id: templateId,
            teamId: input.teamId,
            public: false,
            isSnapshot: true,
            sourceSandboxId: input.sourceSandboxId,
            vcpus: input.vcpus,
            memoryMib: input.memoryMib,
            diskMib: input.diskMib,
          },
        });
        if (input.alias) await tx.templateAlias.create({ data: { alias: input.alias, templateId } });
      } else {
        await tx.template.update({ where: { id: templateId }, data: { sourceSandboxId: input.sourceSandboxId, vcpus: input.vcpus, memoryMib: input.memoryMib } });
      }
      await tx.templateBuild.create({
        data: {
          id: input.buildId,
          templateId,
          state: BuildState.Ready,
          contentHash: input.hostBuildId,
          envdVersion: input.envdVersion,
          vcpus: input.vcpus,
          memoryMib: input.memoryMib,
          diskMib: input.diskMib,
          finishedAt: new Date(),
        },
      });
      await tx.snapshot.create({
        data: {
          kind: 'template',
          sandboxId: null,
          buildId: input.buildId,
          hostId: input.hostId,
          path: input.buildId,
          manifest: { hostTemplateId: input.hostTemplateId, hostBuildId: input.hostBuildId, manifestSha256: input.manifestSha256, sourceSandboxId: input.sourceSandboxId },
          sizeBytes: BigInt(input.sizeBytes),
        },
      });
      const aliases = await tx.templateAlias.findMany({ where: { templateId }, select: { alias: true } });
      return { templateId, aliases: aliases.map((a) => a.alias) };
    });
  }

  /** The team's snapshot template that `ref` (id or name; a tag and a namespace are ignored) names, or null. */
  async findForTeam(ref: string, teamId: string): Promise<{ id: string; aliases: string[] } | null> {
    const bare = bareSnapshotRef(ref);
    const alias = await this.prisma.templateAlias.findUnique({ where: { alias: bare }, select: { templateId: true } });
    const template = await this.prisma.template.findFirst({
      where: { id: alias?.templateId ?? bare, teamId, isSnapshot: true },
      include: { aliases: true },
    });
    return template ? { id: template.id, aliases: template.aliases.map((a) => a.alias) } : null;
  }

  /** Every host location of a snapshot template's builds (what DeleteSnapshot must be sent for). */
  async locationsOf(templateId: string): Promise<HostSnapshotLocation[]> {
    const rows = await this.prisma.snapshot.findMany({ where: { kind: 'template', build: { templateId } } });
    return rows.filter((r) => r.hostId !== null).map((r) => locationOf(r.path, r.hostId as string, r.manifest));
  }

  /** The host location of one snapshot build (null for a template build, which every host can restore). */
  async locationOfBuild(buildId: string): Promise<HostSnapshotLocation | null> {
    const row = await this.prisma.snapshot.findFirst({ where: { kind: 'template', buildId, hostId: { not: null } } });
    return row ? locationOf(row.path, row.hostId as string, row.manifest) : null;
  }

  async deleteTemplate(templateId: string): Promise<void> {
    // Builds and their snapshot rows go with it (cascade); aliases too.
    await this.prisma.template.deleteMany({ where: { id: templateId, isSnapshot: true } });
  }

  /** One page of the team's snapshots, newest first (created_at desc, id desc), after the previous page's last. */
  async page(
    teamId: string,
    filter: { sourceSandboxId?: string; templateId?: string },
    page: { limit: number; after?: { createdAt: Date; id: string } },
  ): Promise<NamedSnapshotRow[]> {
    const rows = await this.prisma.template.findMany({
      where: {
        teamId,
        isSnapshot: true,
        ...(filter.sourceSandboxId !== undefined ? { sourceSandboxId: filter.sourceSandboxId } : {}),
        ...(filter.templateId !== undefined ? { id: filter.templateId } : {}),
        ...(page.after
          ? { OR: [{ createdAt: { lt: page.after.createdAt } }, { createdAt: page.after.createdAt, id: { lt: page.after.id } }] }
          : {}),
      },
      include: { aliases: true },
      orderBy: [{ createdAt: 'desc' }, { id: 'desc' }],
      take: page.limit,
    });
    return rows.map((r) => ({ templateId: r.id, aliases: r.aliases.map((a) => a.alias), createdAt: r.createdAt }));
  }
}

/** `team/name:tag` → `name`: Kiln's snapshot names are team-unique aliases without a namespace; tags are not kept. */
export function bareSnapshotRef(ref: string): string {
  const withoutTag = ref.split(':')[0];
  const slash = withoutTag.lastIndexOf('/');
  return slash >= 0 ? withoutTag.slice(slash + 1) : withoutTag;
}

function locationOf(snapshotId: string, hostId: string, manifest: unknown): HostSnapshotLocation {
  const m = (manifest ?? {}) as { hostTemplateId?: string; hostBuildId?: string };
  return { snapshotId, hostId, hostTemplateId: m.hostTemplateId ?? '', hostBuildId: m.hostBuildId ?? '' };
}
