import { ApiProperty } from '@nestjs/swagger';
import type { FleetHostState, HostAdminState, HostView } from '@kiln/messaging';
import { CLUSTER_ID } from './node-request.dto';

const MIB = 1024 * 1024;

/**
 * The disk a host's sandboxes live on: the agent's data dir. HostView carries its size and use but not its path, so
 * the default KILN_DATA_DIR names it.
 */
const SANDBOX_DISK_MOUNT_POINT = '/var/lib/kiln';

/** E2B's NodeStatus. */
export type NodeStatus = 'ready' | 'draining' | 'connecting' | 'unhealthy' | 'standby';

/** E2B has no `dead` and calls a cordon `standby`; `kilnState` keeps the exact state. */
const NODE_STATUS_BY_STATE: Record<FleetHostState, NodeStatus> = {
  ready: 'ready',
  draining: 'draining',
  cordoned: 'standby',
  unhealthy: 'unhealthy',
  dead: 'unhealthy',
};

export class DiskMetricsBody {
  @ApiProperty() mountPoint: string;
  @ApiProperty() device: string;
  @ApiProperty() filesystemType: string;
  @ApiProperty() usedBytes: number;
  @ApiProperty() totalBytes: number;
}

/** E2B's NodeMetrics. */
export class NodeMetricsBody {
  @ApiProperty({ description: 'vCPUs allocated to sandboxes' }) allocatedCPU: number;
  @ApiProperty({ description: 'Not measured by Kiln: always 0' }) cpuPercent: number;
  @ApiProperty({ description: 'vCPUs the host offers to sandboxes (its capacity)' }) cpuCount: number;
  @ApiProperty() allocatedMemoryBytes: number;
  @ApiProperty({ description: 'Memory allocated to sandboxes' }) memoryUsedBytes: number;
  @ApiProperty({ description: 'Memory the host offers to sandboxes (its capacity)' }) memoryTotalBytes: number;
  @ApiProperty() hugePagesTotal: number;
  @ApiProperty() hugePagesUsed: number;
  @ApiProperty() hugePagesReserved: number;
  @ApiProperty() hugePageSizeBytes: number;
  @ApiProperty({ type: [DiskMetricsBody] }) disks: DiskMetricsBody[];
}

/** E2B's MachineInfo. */
export class MachineInfoBody {
  @ApiProperty() cpuFamily: string;
  @ApiProperty() cpuModel: string;
  @ApiProperty() cpuModelName: string;
  @ApiProperty() cpuArchitecture: string;
}

export class NodeResourcesBody {
  @ApiProperty() vcpus: number;
  @ApiProperty() memoryMib: number;
  @ApiProperty() diskMib: number;
  @ApiProperty() sandboxes: number;
}

export class NodeUsageBody extends NodeResourcesBody {
  @ApiProperty() diskUsedMib: number;
  @ApiProperty() starting: number;
}

/** E2B's NodeDetail, plus Kiln's own fields (the exact state, heartbeat, capacity, usage, templates). */
export class NodeDetailBody {
  @ApiProperty() id: string;
  @ApiProperty() serviceInstanceID: string;
  @ApiProperty({ format: 'uuid' }) clusterID: string;
  @ApiProperty({ enum: ['ready', 'draining', 'connecting', 'unhealthy', 'standby'] }) status: NodeStatus;
  @ApiProperty({ format: 'date-time' }) statusChangedAt: string;
  @ApiProperty() sandboxCount: number;
  @ApiProperty({ type: NodeMetricsBody }) metrics: NodeMetricsBody;
  @ApiProperty() createSuccesses: number;
  @ApiProperty({ description: 'Creates the node accepted and could not start, since the host monitor started' }) createFails: number;
  @ApiProperty({ description: "The host agent's version" }) version: string;
  @ApiProperty() commit: string;
  @ApiProperty({ type: MachineInfoBody }) machineInfo: MachineInfoBody;
  @ApiProperty({ enum: ['ready', 'draining', 'cordoned', 'unhealthy', 'dead'], description: "Kiln's exact state (E2B's status folds dead into unhealthy)" })
  kilnState: FleetHostState;
  @ApiProperty({ enum: ['ready', 'draining', 'cordoned'], description: "The operator's intent, kept while the host is unhealthy or dead" })
  adminState: HostAdminState;
  @ApiProperty({ format: 'date-time' }) lastHeartbeatAt: string;
  @ApiProperty({ enum: ['kvm', 'tcg'] }) acceleration: 'kvm' | 'tcg';
  @ApiProperty({ type: NodeResourcesBody }) capacity: NodeResourcesBody;
  @ApiProperty({ type: NodeUsageBody }) usage: NodeUsageBody;
  @ApiProperty({ type: [String], description: 'Templates whose current build is on the host' }) templates: string[];
  @ApiProperty({ type: [String], description: 'Of those, the ones with a restored clone waiting' }) readyCloneTemplates: string[];
}

/** E2B's Node: NodeDetail's fields and the count of sandboxes being created. */
export class NodeBody extends NodeDetailBody {
  @ApiProperty() sandboxStartingCount: number;
}

export class JoinTokenBody {
  @ApiProperty() hostId: string;
  @ApiProperty({ description: "The host agent's KILN_JOIN_TOKEN: accepted once, for this host id only" }) token: string;
  @ApiProperty({ format: 'date-time' }) expiresAt: string;
}

export function toNodeStatus(state: FleetHostState): NodeStatus {
  return NODE_STATUS_BY_STATE[state];
}

export function toNodeDetailBody(view: HostView): NodeDetailBody {
  return {
    id: view.hostId,
    // One agent process per host: the host id identifies the service instance too.
    serviceInstanceID: view.hostId,
    clusterID: CLUSTER_ID,
    status: toNodeStatus(view.state),
    statusChangedAt: view.stateChangedAt,
    sandboxCount: view.usage.sandboxes,
    metrics: toNodeMetrics(view),
    createSuccesses: view.createSuccesses,
    createFails: view.createFails,
    version: view.agentVersion,
    commit: '',
    machineInfo: {
      cpuFamily: '',
      cpuModel: '',
      cpuModelName: view.machine?.cpuModelName ?? '',
      cpuArchitecture: view.machine?.cpuArchitecture ?? '',
    },
    kilnState: view.state,
    adminState: view.adminState,
    lastHeartbeatAt: view.lastHeartbeatAt,
    acceleration: view.acceleration,
    capacity: {
      vcpus: view.capacity.vcpus,
      memoryMib: view.capacity.memoryMib,
      diskMib: view.capacity.diskMib,
      sandboxes: view.capacity.sandboxes,
    },
    usage: {
      vcpus: view.usage.vcpus,
      memoryMib: view.usage.memoryMib,
      diskMib: view.usage.diskMib,
      sandboxes: view.usage.sandboxes,
      diskUsedMib: view.usage.diskUsedMib,
      starting: view.usage.starting,
    },
    templates: [...view.templates],
    readyCloneTemplates: [...view.readyCloneTemplates],
  };
}

export function toNodeBody(view: HostView): NodeBody {
  return { ...toNodeDetailBody(view), sandboxStartingCount: view.usage.starting };
}

/**
 * E2B's NodeMetrics from what the host reports. Kiln accounts in what sandboxes were given, not in what the
 * machine measures: allocated and "used" memory are both the sandboxes' allocation, and the totals are the host's
 * capacity for sandboxes (its KILN_CAPACITY_* or what it detected). CPU load and huge pages are not reported: 0.
 */
function toNodeMetrics(view: HostView): NodeMetricsBody {
  return {
    allocatedCPU: view.usage.vcpus,
    cpuPercent: 0,
    cpuCount: view.capacity.vcpus,
    allocatedMemoryBytes: view.usage.memoryMib * MIB,
    memoryUsedBytes: view.usage.memoryMib * MIB,
    memoryTotalBytes: view.capacity.memoryMib * MIB,
    hugePagesTotal: 0,
    hugePagesUsed: 0,
    hugePagesReserved: 0,
    hugePageSizeBytes: 0,
    // A host that reported no disk capacity (an agent from before the fleet) has no disk to describe.
    disks:
      view.capacity.diskMib > 0
        ? [
            {
              mountPoint: SANDBOX_DISK_MOUNT_POINT,
              device: '',
              filesystemType: '',
              usedBytes: view.usage.diskUsedMib * MIB,
              totalBytes: view.capacity.diskMib * MIB,
            },
          ]
        : [],
  };
}
