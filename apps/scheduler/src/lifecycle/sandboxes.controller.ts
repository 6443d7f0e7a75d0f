import { Controller, UseFilters } from '@nestjs/common';
import { MessagePattern, Payload } from '@nestjs/microservices';
import { SandboxRoute, SandboxView } from '@kiln/contracts';
import {
  CreateSandboxCommand,
  CreateSnapshotCommand,
  DeleteSnapshotCommand,
  DeleteSnapshotReply,
  ForkCommand,
  ForkReply,
  ListSnapshotsQuery,
  PauseCommand,
  ResumeReply,
  SnapshotInfoView,
  SnapshotPage,
  KillReply,
  ListSandboxesQuery,
  RefreshCommand,
  ResumeCommand,
  SandboxLogsReply,
  SandboxPage,
  SandboxRef,
  SetTimeoutCommand,
  Subjects,
  UpdateNetworkCommand,
} from '@kiln/messaging';
import { SandboxLifecycleService } from './sandbox-lifecycle.service';
import { NamedSnapshotsService } from './named-snapshots.service';
import { SchedulerRpcExceptionFilter } from '../rpc/scheduler-rpc-exception.filter';

/** NATS request/reply surface of the scheduler; the gateway is its caller. */
@Controller()
@UseFilters(SchedulerRpcExceptionFilter)
export class SandboxesController {
  constructor(
    private readonly lifecycle: SandboxLifecycleService,
    private readonly snapshots: NamedSnapshotsService,
  ) {}

  @MessagePattern(Subjects.sandboxCreate)
  create(@Payload() command: CreateSandboxCommand): Promise<SandboxView> {
    return this.lifecycle.create(command);
  }

  @MessagePattern(Subjects.sandboxGet)
  get(@Payload() ref: SandboxRef): Promise<SandboxView> {
    return this.lifecycle.get(ref);
  }

  @MessagePattern(Subjects.sandboxList)
  list(@Payload() query: ListSandboxesQuery): Promise<SandboxPage> {
    return this.lifecycle.list(query);
  }

  @MessagePattern(Subjects.sandboxKill)
  kill(@Payload() ref: SandboxRef): Promise<KillReply> {
    return this.lifecycle.kill(ref);
  }

  @MessagePattern(Subjects.sandboxSetTimeout)
  setTimeout(@Payload() command: SetTimeoutCommand): Promise<SandboxView> {
    return this.lifecycle.setTimeout(command);
  }

  @MessagePattern(Subjects.sandboxRefresh)
  refresh(@Payload() command: RefreshCommand): Promise<SandboxView> {
    return this.lifecycle.refresh(command);
  }

  @MessagePattern(Subjects.sandboxPause)
  pause(@Payload() command: PauseCommand): Promise<SandboxView> {
    return this.lifecycle.pause(command);
  }

  @MessagePattern(Subjects.sandboxResume)
  resume(@Payload() command: ResumeCommand): Promise<ResumeReply> {
    return this.lifecycle.resume(command);
  }

  @MessagePattern(Subjects.sandboxConnect)
  connect(@Payload() command: ResumeCommand): Promise<ResumeReply> {
    return this.lifecycle.connect(command);
  }

  @MessagePattern(Subjects.sandboxAutoResume)
  autoResume(@Payload() request: { sandboxId: string }): Promise<SandboxRoute> {
    return this.lifecycle.autoResume(request.sandboxId);
  }

  @MessagePattern(Subjects.sandboxFork)
  fork(@Payload() command: ForkCommand): Promise<ForkReply> {
    return this.lifecycle.fork(command);
  }

  @MessagePattern(Subjects.snapshotCreate)
  createSnapshot(@Payload() command: CreateSnapshotCommand): Promise<SnapshotInfoView> {
    return this.snapshots.create(command);
  }

  @MessagePattern(Subjects.snapshotList)
  listSnapshots(@Payload() query: ListSnapshotsQuery): Promise<SnapshotPage> {
    return this.snapshots.list(query);
  }

  @MessagePattern(Subjects.snapshotDelete)
  deleteSnapshot(@Payload() command: DeleteSnapshotCommand): Promise<DeleteSnapshotReply> {
    return this.snapshots.delete(command);
  }

  @MessagePattern(Subjects.sandboxRoute)
  route(@Payload() request: { sandboxId: string }): Promise<SandboxRoute> {
    return this.lifecycle.route(request.sandboxId);
  }

  @MessagePattern(Subjects.sandboxUpdateNetwork)
  updateNetwork(@Payload() command: UpdateNetworkCommand): Promise<SandboxView> {
    return this.lifecycle.updateNetwork(command);
  }

  @MessagePattern(Subjects.sandboxLogs)
  logs(@Payload() ref: SandboxRef): Promise<SandboxLogsReply> {
    return this.lifecycle.logs(ref);
  }
}
