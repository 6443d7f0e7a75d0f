import { Injectable } from '@nestjs/common';
import { BuildState } from '@kiln/contracts';
import { PrismaService } from '../prisma.service';
import { HostSnapshotLocation } from './named-snapshot.repository';

/** E2B's implicit tag: `name` and `name:default` mean the newest ready build unless `default` was assigned. */
export const DEFAULT_TEMPLATE_TAG = 'default';

/** Tags that, unassigned, mean the newest ready build: E2B's `default`, and `latest` as image references use it. */
export const IMPLICIT_TEMPLATE_TAGS: readonly string[] = [DEFAULT_TEMPLATE_TAG, 'latest'];

export interface ResolvedTemplate {
  templateId: string;
  alias?: string;
  buildId?: string;
  /** The build's identity on hosts (its content hash): what a host agent restores. */
  hostBuildId?: string;
  vcpus: number;
  memoryMib: number;
  diskMib: number;
  envdVersion?: string;
  /** Set for a named snapshot: sandboxes from it start from these artifacts, on that host only. */
  snapshot?: HostSnapshotLocation;
}

@Injectable()
export class TemplateRepository {
  constructor(private readonly prisma: PrismaService) {}

  /**
   * Resolves an id or alias visible to the team (its own or public) to the template and a ready build: for
   * `name:tag` the build the tag names (none when that build is not ready), otherwise (and for `name:default` or
   * `name:latest` when no such tag was assigned) the newest ready build. Null when the team may not see it or the tag does not
   * exist. Snapshots ignore tags (their names carry none).
   */
  async resolve(ref: string, teamId: string): Promise<ResolvedTemplate | null> {
    const [name, tag] = ref.split(':');
    const alias = await this.prisma.templateAlias.findUnique({ where: { alias: name } });
    const templateId = alias?.templateId ?? name;
    const template = await this.prisma.template.findFirst({
      where: { id: templateId, OR: [{ public: true }, { teamId }] },
      include: { builds: { where: { state: BuildState.Ready }, orderBy: { createdAt: 'desc' }, take: 1 }, aliases: true },
    });
    if (!template) return null;
    let build: (typeof template.builds)[number] | undefined = template.builds[0];
    if (tag && !template.isSnapshot) {
      const tagged = await this.prisma.templateTag.findUnique({ where: { templateId_tag: { templateId: template.id, tag } }, include: { build: true } });
      if (!tagged && !IMPLICIT_TEMPLATE_TAGS.includes(tag)) return null;
      if (tagged) build = tagged.build.state === BuildState.Ready ? tagged.build : undefined;
    }
    const snapshotRow =
      template.isSnapshot && build
        ? await this.prisma.snapshot.findFirst({ where: { kind: 'template', buildId: build.id, hostId: { not: null } } })
        : null;
    const manifest = (snapshotRow?.manifest ?? {}) as { hostTemplateId?: string; hostBuildId?: string };
    return {
      ...(snapshotRow
        ? {
            snapshot: {
              snapshotId: snapshotRow.path,
              hostId: snapshotRow.hostId as string,
              hostTemplateId: manifest.hostTemplateId ?? '',
              hostBuildId: manifest.hostBuildId ?? build?.contentHash ?? '',
            },
          }
        : {}),
      templateId: template.id,
      alias: alias?.alias ?? template.aliases[0]?.alias,
      buildId: build?.id,
      hostBuildId: build?.contentHash ?? undefined,
      vcpus: build?.vcpus ?? template.vcpus,
      memoryMib: build?.memoryMib ?? template.memoryMib,
      diskMib: build?.diskMib ?? template.diskMib,
      envdVersion: build?.envdVersion ?? undefined,
    };
  }

  /** The id of the template an id or alias names, if the team may see it (its own or public); null otherwise. */
  async resolveVisibleId(ref: string, teamId: string): Promise<string | null> {
    const alias = await this.prisma.templateAlias.findUnique({ where: { alias: ref }, select: { templateId: true } });
    const template = await this.prisma.template.findFirst({
      where: { id: alias?.templateId ?? ref, OR: [{ public: true }, { teamId }] },
      select: { id: true },
    });
    return template?.id ?? null;
  }

  /** A template the team may see, by id or alias, with its aliases; null when it may not (never "forbidden"). */
  async findVisible(ref: string, teamId: string) {
    const id = await this.resolveVisibleId(ref, teamId);
    return id ? this.prisma.template.findUnique({ where: { id }, include: { aliases: true } }) : null;
  }

  /** One page of a template's builds, newest first (E2B: created_at desc, id desc), after the previous page's last. */
  buildsPage(templateId: string, page: { limit: number; after?: { createdAt: Date; id: string } }) {
    return this.prisma.templateBuild.findMany({
      where: {
        templateId,
        ...(page.after
          ? { OR: [{ createdAt: { lt: page.after.createdAt } }, { createdAt: page.after.createdAt, id: { lt: page.after.id } }] }
          : {}),
      },
      orderBy: [{ createdAt: 'desc' }, { id: 'desc' }],
      take: page.limit,
    });
  }

  /**
   * Templates the team may see, oldest first, each with its aliases, its newest build (`builds[0]`, any state), its
   * newest ready build (`latestReady`) and how many builds it has.
   */
  async listVisible(teamId: string) {
    const templates = await this.prisma.template.findMany({
      where: { OR: [{ public: true }, { teamId }] },
      include: { aliases: { orderBy: { createdAt: 'asc' } }, builds: { orderBy: [{ createdAt: 'desc' }, { id: 'desc' }], take: 1 }, _count: { select: { builds: true } } },
      orderBy: { createdAt: 'asc' },
    });
    const ready = await this.prisma.templateBuild.findMany({
      where: { templateId: { in: templates.map((t) => t.id) }, state: BuildState.Ready },
      orderBy: [{ templateId: 'asc' }, { createdAt: 'desc' }, { id: 'desc' }],
      distinct: ['templateId'],
    });
    const readyByTemplate = new Map(ready.map((b) => [b.templateId, b]));
    return templates.map((t) => ({ ...t, latestReady: readyByTemplate.get(t.id) ?? null }));
  }

  /** Registers a platform template (public) with one alias and a ready build; idempotent. */
  async ensurePublicTemplate(input: {
    templateId: string;
    alias: string;
    vcpus: number;
    memoryMib: number;
    diskMib: number;
    envdVersion: string;
    contentHash: string;
  }): Promise<void> {
    await this.prisma.$transaction(async (tx) => {
      await tx.template.upsert({
        where: { id: input.templateId },
        update: { vcpus: input.vcpus, memoryMib: input.memoryMib, diskMib: input.diskMib, public: true },
        create: { id: input.templateId, public: true, vcpus: input.vcpus, memoryMib: input.memoryMib, diskMib: input.diskMib },
      });
      await tx.templateAlias.upsert({
        where: { alias: input.alias },
        update: { templateId: input.templateId },
        create: { alias: input.alias, templateId: input.templateId },
      });
      const existing = await tx.templateBuild.findFirst({
        where: { templateId: input.templateId, contentHash: input.contentHash, state: BuildState.Ready },
      });
      if (!existing) {
        await tx.templateBuild.create({
          data: {
            templateId: input.templateId,
            state: BuildState.Ready,
            contentHash: input.contentHash,
            envdVersion: input.envdVersion,
            vcpus: input.vcpus,
            memoryMib: input.memoryMib,
            diskMib: input.diskMib,
            finishedAt: new Date(),
          },
        });
      }
    });
  }
}
