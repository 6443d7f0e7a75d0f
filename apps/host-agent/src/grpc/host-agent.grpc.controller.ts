import { Controller, UseFilters } from '@nestjs/common';
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
} from '@kiln/proto/hostagent';
import { HostInfoService } from '../control-plane/host-info.service';
import { LiveSandbox, SandboxManager } from '../sandbox/sandbox-manager.service';
import { GrpcExceptionFilter } from './grpc-exception.filter';

const STATE: Record<LiveSandbox['state'], SandboxState> = {
  starting: SandboxState.SANDBOX_STATE_STARTING,
  running: SandboxState.SANDBOX_STATE_RUNNING,
  stopping: SandboxState.SANDBOX_STATE_STOPPING,
};

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
  };
}

/** The control plane's view of this host (proto/hostagent/v1/hostagent.proto). */
@Controller()
@HostAgentControllerMethods()
@UseFilters(GrpcExceptionFilter)
export class HostAgentGrpcController implements HostAgentController {
  constructor(
    private readonly sandboxes: SandboxManager,
    private readonly hostDescription: HostInfoService,
  ) {}

  async createSandbox(request: CreateSandboxRequest): Promise<SandboxInfo> {
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
    });
    return toInfo(live);
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

