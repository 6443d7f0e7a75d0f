import { randomUUID } from 'node:crypto';
import { Injectable, Logger } from '@nestjs/common';
import { ENVD_COMPAT_VERSION, ErrorCode, KilnError, SandboxState } from '@kiln/contracts';
import { SchedulerEnv, pauseDeadlineMs } from '@kiln/config';
import { HostRepository, NamedSnapshotRepository, TemplateRepository, bareSnapshotRef, decodeKeysetCursor, encodeKeysetCursor } from '@kiln/db';
import {
  CreateSnapshotCommand,
  DeleteSnapshotCommand,
  DeleteSnapshotReply,
  ListSnapshotsQuery,
  SnapshotInfoView,
  SnapshotPage,
} from '@kiln/messaging';
import { HostAgentClients } from '../hosts/host-agent-clients';
import { newSandboxId } from './sandbox-ids';
import { SandboxLifecycleService } from './sandbox-lifecycle.service';

/** E2B's default tag: the only one Kiln keeps, so every snapshot id and name carries it. */
const DEFAULT_TAG = 'default';
const DEFAULT_PAGE = 100;

/**
 * Named snapshots (E2B's POST /sandboxes/{id}/snapshots, GET /snapshots, and DELETE /templates/{id} for a snapshot).
 * The host checkpoints the running sandbox in place into a snapshot that outlives it; the control plane records it as
 * a template of the team with one build per snapshot, so `Sandbox.create(snapshotId)` starts from it like a template.
 */
@Injectable()
export class NamedSnapshotsService {
  private readonly logger = new Logger(NamedSnapshotsService.name);

  constructor(
    private readonly lifecycle: SandboxLifecycleService,
    private readonly snapshots: NamedSnapshotRepository,
    private readonly templates: TemplateRepository,
    private readonly hosts: HostRepository,
    private readonly agents: HostAgentClients,
    private readonly env: SchedulerEnv,
  ) {}

  async create(command: CreateSnapshotCommand): Promise<SnapshotInfoView> {
    const source = await this.lifecycle.requireLive(command);
    if (source.state !== SandboxState.Running) {
      throw new KilnError(ErrorCode.Conflict, `sandbox ${source.id} is ${source.state}: only a running sandbox can be snapshotted`);
    }
    let existingTemplateId: string | undefined;
    if (command.name !== undefined) {
      const owner = await this.snapshots.aliasOwner(command.name);
      if (owner) {
        // E2B: a name the team already uses for a snapshot gets the new snapshot as its new build.
        if (owner.teamId !== command.teamId || !owner.isSnapshot) throw new KilnError(ErrorCode.Conflict, `name '${command.name}' is already taken by a template`);
        existingTemplateId = owner.templateId;
      }
    }
    const host = await this.lifecycle.requireHost(source);
    // The build id is the host's snapshot id too ([a-z0-9-], 36 characters).
    const buildId = randomUUID();
    const info = await this.agents.call(
      `snapshot ${source.id} on ${host.id}`,
      this.agents.for(host.id, host.address).createSnapshot({ sandboxId: source.id, snapshotId: buildId }),
      pauseDeadlineMs(this.env),
    );
    try {
      const recorded = await this.snapshots.record({
        teamId: source.teamId,
        sourceSandboxId: source.id,
        existingTemplateId,
        templateId: newSandboxId(),
        alias: existingTemplateId ? undefined : command.name,
        buildId,
        hostId: host.id,
        hostTemplateId: info.templateId || source.templateId,
        hostBuildId: info.buildId,
        vcpus: info.vcpus || source.vcpus,
        memoryMib: info.memoryMib || source.memoryMib,
        diskMib: source.diskMib,
        envdVersion: ENVD_COMPAT_VERSION,
        sizeBytes: info.sizeBytes,
        manifestSha256: info.manifestSha256,
      });
      return snapshotInfoView(recorded.templateId, recorded.aliases);
    } catch (error) {
      // Not recorded, so nothing could ever delete it: the host's copy goes now.
      await this.deleteOnHost(host.id, host.address, buildId).catch((e) => this.logger.warn(`snapshot ${buildId} left on ${host.id}: ${String(e)}`));
      throw error;
    }
  }

  async list(query: ListSnapshotsQuery): Promise<SnapshotPage> {
    const cursor = query.nextToken ? decodeKeysetCursor(query.nextToken) : undefined;
    if (query.nextToken && (!cursor || cursor.order !== 'desc')) throw KilnError.invalid('nextToken: not a token this API issued');
    let templateId: string | undefined;
    if (query.name !== undefined) {
      const named = await this.snapshots.findForTeam(query.name, query.teamId);
      if (!named) return { snapshots: [] };
      templateId = named.id;
    }
    const limit = Math.min(Math.max(query.limit ?? DEFAULT_PAGE, 1), DEFAULT_PAGE);
    const rows = await this.snapshots.page(
      query.teamId,
      { sourceSandboxId: query.sandboxId, templateId },
      { limit: limit + 1, after: cursor ? { createdAt: cursor.at, id: cursor.id } : undefined },
    );
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    return {
      snapshots: page.map((row) => snapshotInfoView(row.templateId, row.aliases)),
      nextToken: rows.length > limit ? encodeKeysetCursor(last.createdAt, last.templateId, 'desc') : undefined,
    };
  }

  /**
   * Deletes a snapshot (every build's artifacts on its host, then the records). A template that is not a snapshot is
   * reported as such (deleting templates is not implemented); one the team cannot see is not found.
   */
  async delete(command: DeleteSnapshotCommand): Promise<DeleteSnapshotReply> {
    const snapshot = await this.snapshots.findForTeam(command.ref, command.teamId);
    if (!snapshot) {
      const visible = await this.templates.resolveVisibleId(bareSnapshotRef(command.ref), command.teamId);
      if (!visible) throw KilnError.notFound(`template ${command.ref}`);
      return { wasSnapshot: false };
    }
    for (const location of await this.snapshots.locationsOf(snapshot.id)) {
      const host = await this.hosts.get(location.hostId);
      if (!host) {
        this.logger.warn(`snapshot ${location.snapshotId}: its host ${location.hostId} is not registered; its artifacts stay there`);
        continue;
      }
      // A failure keeps the records, so the delete can be retried; DeleteSnapshot is idempotent on the host.
      await this.deleteOnHost(host.id, host.address, location.snapshotId);
    }
    await this.snapshots.deleteTemplate(snapshot.id);
    return { wasSnapshot: true };
  }

  private async deleteOnHost(hostId: string, address: string, snapshotId: string): Promise<void> {
    await this.agents.call(`delete snapshot ${snapshotId} on ${hostId}`, this.agents.for(hostId, address).deleteSnapshot({ snapshotId }), 30_000);
  }
}

/** E2B's SnapshotInfo: the name (with its tag) when it has one, else the template id with the tag. */
export function snapshotInfoView(templateId: string, aliases: string[]): SnapshotInfoView {
  const names = aliases.map((alias) => `${alias}:${DEFAULT_TAG}`);
  return { snapshotID: names[0] ?? `${templateId}:${DEFAULT_TAG}`, names };
}
