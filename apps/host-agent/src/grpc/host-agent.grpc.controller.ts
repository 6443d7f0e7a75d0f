import { Controller, UseFilters } from '@nestjs/common';
import type { Metadata, ServerUnaryCall } from '@grpc/grpc-js';
import { ENVD_COMPAT_VERSION, ErrorCode, KilnError } from '@kiln/contracts';
import {
  CreateSandboxRequest,
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
  type EgressPolicy,
} from '@kiln/proto/hostagent';
import { HostInfoService } from '../control-plane/host-info.service';
import { LiveSandbox, SandboxManager } from '../sandbox/sandbox-manager.service';
import { GrpcExceptionFilter } from './grpc-exception.filter';

const STATE: Record<LiveSandbox['state'], SandboxState> = {
  starting: SandboxState.SANDBOX_STATE_STARTING,
  running: SandboxState.SANDBOX_STATE_RUNNING,
  stopping: SandboxState.SANDBOX_STATE_STOPPING,
};

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
    });
    return toInfo(live);
  }

  async updateSandboxNetwork(request: UpdateSandboxNetworkRequest): Promise<SandboxInfo> {
    return toInfo(await this.sandboxes.updateNetwork(request.sandboxId, egressOf(request.egress)));
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

  pauseSandbox(): PauseSandboxResponse {
    throw new KilnError(ErrorCode.FailedPrecondition, 'pause is not implemented on this host agent yet');
  }

  resumeSandbox(): SandboxInfo {
    throw new KilnError(ErrorCode.FailedPrecondition, 'resume is not implemented on this host agent yet');
  }

  hostInfo(): Promise<HostInfoResponse> {
    return this.hostDescription.describe();
  }
}

