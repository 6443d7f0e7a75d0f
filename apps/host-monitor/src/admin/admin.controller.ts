import { Controller, UseFilters } from '@nestjs/common';
import { MessagePattern, Payload } from '@nestjs/microservices';
import {
  HostAdminState,
  HostView,
  JoinTokenCreateCommand,
  JoinTokenReply,
  MonitorSubjects,
  NodeRef,
  NodeRemoveReply,
  NodeSetStatusCommand,
  NodesListReply,
} from '@kiln/messaging';
import { FleetService } from '../fleet/fleet.service';
import { JoinTokens } from '../registration/join-tokens.service';
import { MonitorRpcExceptionFilter } from '../rpc/monitor-rpc-exception.filter';
import { InvalidAdminRequestError } from './admin.errors';

const ADMIN_STATES: ReadonlySet<string> = new Set<HostAdminState>(['ready', 'draining', 'cordoned']);

function hostIdOf(ref: NodeRef | undefined): string {
  if (typeof ref?.hostId !== 'string' || ref.hostId.length === 0) throw new InvalidAdminRequestError('hostId is required');
  return ref.hostId;
}

/**
 * The gateway's admin API, answered over NATS (MonitorSubjects, in the monitor's queue group). An unknown host is
 * not_found; removing a live host with sandboxes is a conflict.
 */
@Controller()
@UseFilters(MonitorRpcExceptionFilter)
export class AdminController {
  constructor(
    private readonly fleet: FleetService,
    private readonly joinTokens: JoinTokens,
  ) {}

  @MessagePattern(MonitorSubjects.nodesList)
  list(): NodesListReply {
    return { nodes: this.fleet.views() };
  }

  @MessagePattern(MonitorSubjects.nodesGet)
  get(@Payload() ref: NodeRef): HostView {
    return this.fleet.view(hostIdOf(ref));
  }

  @MessagePattern(MonitorSubjects.nodesSetStatus)
  setStatus(@Payload() command: NodeSetStatusCommand): Promise<HostView> {
    const hostId = hostIdOf(command);
    if (!ADMIN_STATES.has(command.adminState)) throw new InvalidAdminRequestError("adminState must be 'ready', 'draining' or 'cordoned'");
    return this.fleet.setAdminState(hostId, command.adminState);
  }

  @MessagePattern(MonitorSubjects.nodesRemove)
  async remove(@Payload() ref: NodeRef): Promise<NodeRemoveReply> {
    await this.fleet.remove(hostIdOf(ref));
    return { removed: true };
  }

  @MessagePattern(MonitorSubjects.joinTokenCreate)
  createJoinToken(@Payload() command: JoinTokenCreateCommand): JoinTokenReply {
    return this.joinTokens.mint(command?.hostId, command?.ttlSeconds);
  }
}
