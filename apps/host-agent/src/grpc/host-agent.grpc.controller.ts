import { Controller, UseFilters } from '@nestjs/common';
import { status, type Metadata, type ServerUnaryCall } from '@grpc/grpc-js';
import { ENVD_COMPAT_VERSION, ErrorCode, GRPC_STATUS_BY_ERROR_CODE, KilnError } from '@kiln/contracts';
import {
  CreateSandboxRequest,
  CreateSnapshotRequest,
  DeleteSnapshotRequest,
  DeleteSnapshotResponse,
  ForkSandboxRequest,
  ForkSandboxResponse,
  PauseSandboxRequest,
  ResumeSandboxRequest,
  SnapshotInfo,
  DestroySandboxRequest,
  DestroySandboxResponse,
  GetSandboxRequest,
  HostAgentController,
  HostAgentControllerMethods,
  HostInfoResponse,
  ListSandboxesResponse,
  PauseSandboxResponse,
  SandboxInfo,
  SandboxState,
  UpdateSandboxNetworkRequest,
  type BuildTemplateEvent,
  type BuildTemplateRequest,
  type EgressPolicy,
} from '@kiln/proto/hostagent';
import type { Observable } from 'rxjs';
import { HostInfoService } from '../control-plane/host-info.service';
import { TemplateBuildService } from '../template-build';
import { LiveSandbox, SandboxManager } from '../sandbox/sandbox-manager.service';
import { GrpcExceptionFilter } from './grpc-exception.filter';

const STATE: Record<LiveSandbox['state'], SandboxState> = {
  starting: SandboxState.SANDBOX_STATE_STARTING,
  running: SandboxState.SANDBOX_STATE_RUNNING,
  pausing: SandboxState.SANDBOX_STATE_PAUSING,
  paused: SandboxState.SANDBOX_STATE_PAUSED,
  resuming: SandboxState.SANDBOX_STATE_RESUMING,
  stopping: SandboxState.SANDBOX_STATE_STOPPING,
};

/** gRPC status names for per-fork errors (ForkResult.error_code), from the one error-code mapping. */
const GRPC_STATUS_NAME: Record<number, string> = Object.fromEntries(Object.entries(status).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k]));

/** The wire form of a policy: an absent message is an empty policy (no rules). */
function egressOf(egress: EgressPolicy | undefined): EgressPolicy {
  return { allowOut: egress?.allowOut ?? [], denyOut: egress?.denyOut ?? [] };
}

function toInfo(live: LiveSandbox): SandboxInfo {
  return {
    sandboxId: live.record.sandboxId,
    templateId: live.record.templateId ?? '',
    buildId: live.record.buildId ?? '',
    state: STATE[live.state],
    vcpus: live.record.vcpus,
    memoryMib: live.record.memoryMib,
    metadata: live.record.metadata ?? {},
    startedAtMs: live.record.createdAt ? Date.parse(live.record.createdAt) : 0,
    guestAddress: live.slot?.hostAddress ?? '',
    pid: live.vm?.pid ?? 0,
    envdVersion: ENVD_COMPAT_VERSION,
    // What the host applied (and re-applies after a restart), not what was asked.
    egress: egressOf(live.record.egress),
    timeoutSeconds: live.record.timeoutSeconds ?? 0,
  };
}

/**
 * What is left of the call's gRPC deadline (less a margin for the rest of the create), or undefined when the
 * caller set none: then the agent's own bound applies.
 */
function remainingDeadlineMs(call: Pick<ServerUnaryCall<unknown, unknown>, 'getDeadline'> | undefined): number | undefined {
  const deadline = call?.getDeadline?.();
  const at = deadline instanceof Date ? deadline.getTime() : deadline;
  if (at === undefined || !Number.isFinite(at)) return undefined;
  return Math.max(0, at - Date.now() - CREATE_AFTER_SNAPSHOT_MARGIN_MS);
}

/** Left of a create's deadline for the restore and the guest's /init once the snapshot is ready. */
const CREATE_AFTER_SNAPSHOT_MARGIN_MS = 30_000;

/** The control plane's view of this host (proto/hostagent/v1/hostagent.proto). */
@Controller()
@HostAgentControllerMethods()
@UseFilters(GrpcExceptionFilter)
export class HostAgentGrpcController implements HostAgentController {
  constructor(
    private readonly sandboxes: SandboxManager,
    private readonly hostDescription: HostInfoService,
    private readonly templateBuilds: TemplateBuildService,
  ) {}

  async createSandbox(request: CreateSandboxRequest, _metadata?: Metadata, call?: ServerUnaryCall<unknown, unknown>): Promise<SandboxInfo> {
    if (!request.buildId) throw new KilnError(ErrorCode.InvalidArgument, 'build_id is required: the host restores exactly the build it is given');
    const live = await this.sandboxes.create({
      sandboxId: request.sandboxId,
      templateId: request.templateId,
      buildId: request.buildId,
      teamId: request.teamId,
      vcpus: request.vcpus,
      memoryMib: request.memoryMib,
      envVars: request.envVars ?? {},
      metadata: request.metadata ?? {},
      envdAccessToken: request.envdAccessToken,
      egress: egressOf(request.egress),
      timeoutSeconds: request.timeoutSeconds,
      templateWaitMs: remainingDeadlineMs(call),
      ...(request.snapshotId ? { snapshotId: request.snapshotId } : {}),
    });
    return toInfo(live);
  }

  async updateSandboxNetwork(request: UpdateSandboxNetworkRequest): Promise<SandboxInfo> {
    return toInfo(await this.sandboxes.updateNetwork(request.sandboxId, egressOf(request.egress)));
  }

  /** Server streaming: the build's events as they happen; a cancelled call unsubscribes, which stops the build. */
  buildTemplate(request: BuildTemplateRequest): Observable<BuildTemplateEvent> {
    return this.templateBuilds.build(request);
  }

  async destroySandbox(request: DestroySandboxRequest): Promise<DestroySandboxResponse> {
    return { existed: await this.sandboxes.destroy(request.sandboxId) };
  }

  getSandbox(request: GetSandboxRequest): SandboxInfo {
    const live = this.sandboxes.get(request.sandboxId);
    if (!live) throw KilnError.notFound(`sandbox ${request.sandboxId}`);
    return toInfo(live);
  }

  listSandboxes(): ListSandboxesResponse {
    return { sandboxes: this.sandboxes.list().map(toInfo) };
  }

  async pauseSandbox(request: PauseSandboxRequest): Promise<PauseSandboxResponse> {
    const { paused, durationMs } = await this.sandboxes.pause(request.sandboxId, request.keepMemory);
    return {
      sandboxId: request.sandboxId,
      artifacts: {
        keepMemory: paused.keepMemory,
        memoryBytes: paused.memoryBytes,
        stateBytes: paused.stateBytes,
        diskBytes: paused.diskBytes,
        manifestSha256: paused.manifestSha256,
      },
      durationMs,
    };
  }

  async resumeSandbox(request: ResumeSandboxRequest): Promise<SandboxInfo> {
    const live = await this.sandboxes.resume(request.sandboxId, {
      envdAccessToken: request.envdAccessToken,
      egress: request.egress ? egressOf(request.egress) : undefined,
      timeoutSeconds: request.timeoutSeconds,
    });
    return toInfo(live);
  }

  async forkSandbox(request: ForkSandboxRequest): Promise<ForkSandboxResponse> {
    if (!request.forks?.length) throw new KilnError(ErrorCode.InvalidArgument, 'forks: at least one fork is required');
    const report = await this.sandboxes.fork(
      request.sourceSandboxId,
      request.forks.map((fork) => ({
        sandboxId: fork.sandboxId,
        templateId: '',
        buildId: '',
        teamId: fork.teamId,
        envVars: {},
        metadata: fork.metadata ?? {},
        envdAccessToken: fork.envdAccessToken,
        egress: egressOf(fork.egress),
        timeoutSeconds: fork.timeoutSeconds,
      })),
    );
    return {
      checkpointMs: report.checkpointMs,
      results: report.results.map((result) =>
        result.sandbox
          ? { sandboxId: result.sandboxId, sandbox: toInfo(result.sandbox), errorCode: '', errorMessage: '' }
          : {
              sandboxId: result.sandboxId,
              sandbox: undefined,
              errorCode: GRPC_STATUS_NAME[GRPC_STATUS_BY_ERROR_CODE[result.error!.code]] ?? 'UNKNOWN',
              errorMessage: result.error!.message,
            },
      ),
    };
  }

  async createSnapshot(request: CreateSnapshotRequest): Promise<SnapshotInfo> {
    const report = await this.sandboxes.createSnapshot(request.sandboxId, request.snapshotId);
    const { manifest } = report;
    return {
      snapshotId: report.snapshotId,
      sourceSandboxId: manifest.sourceSandboxId,
      templateId: manifest.templateId,
      buildId: manifest.buildId,
      vcpus: manifest.vm.vcpus,
      memoryMib: manifest.vm.memoryMib,
      sizeBytes: report.sizeBytes,
      manifestSha256: report.manifestSha256,
      createdAtMs: Date.parse(manifest.createdAt),
    };
  }

  async deleteSnapshot(request: DeleteSnapshotRequest): Promise<DeleteSnapshotResponse> {
    return { existed: await this.sandboxes.deleteSnapshot(request.snapshotId) };
  }

  hostInfo(): Promise<HostInfoResponse> {
    return this.hostDescription.describe();
  }
}

