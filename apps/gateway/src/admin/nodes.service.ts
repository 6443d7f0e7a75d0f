import { Injectable } from '@nestjs/common';
import { GatewayEnv } from '@kiln/config';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { HostView, JoinTokenReply, MessagingClient, MonitorSubjects } from '@kiln/messaging';
import { NodeNotFoundError } from './admin.errors';
import { ADMIN_STATE_BY_NODE_STATUS, CLUSTER_ID, SettableNodeStatus } from './node-request.dto';

/**
 * The admin API's logic: the host monitor owns the fleet, so every call is a request to it over NATS. A node the
 * monitor does not know is a 404 worded here, whatever the monitor's message. Kiln runs one cluster (CLUSTER_ID):
 * asking about another lists nothing and finds nothing.
 */
@Injectable()
export class NodesService {
  constructor(
    private readonly messaging: MessagingClient,
    private readonly env: GatewayEnv,
  ) {}

  /** Every host the monitor knows, by id. */
  async list(clusterId?: string): Promise<HostView[]> {
    if (!inThisCluster(clusterId)) return [];
    const reply = await this.messaging.request(MonitorSubjects.nodesList, {}, this.env.NATS_REQUEST_TIMEOUT_MS);
    return [...reply.nodes].sort((a, b) => (a.hostId < b.hostId ? -1 : a.hostId > b.hostId ? 1 : 0));
  }

  async get(nodeId: string, clusterId?: string): Promise<HostView> {
    if (!inThisCluster(clusterId)) throw new NodeNotFoundError(nodeId);
    return this.onNode(nodeId, () => this.messaging.request(MonitorSubjects.nodesGet, { hostId: nodeId }, this.env.NATS_REQUEST_TIMEOUT_MS));
  }

  /** Drain, cordon or return a host to ready; its liveness (unhealthy, dead) is the monitor's and unaffected. */
  async setStatus(nodeId: string, status: SettableNodeStatus, clusterId?: string): Promise<HostView> {
    if (!inThisCluster(clusterId)) throw new NodeNotFoundError(nodeId);
    const adminState = ADMIN_STATE_BY_NODE_STATUS[status];
    return this.onNode(nodeId, () => this.messaging.request(MonitorSubjects.nodesSetStatus, { hostId: nodeId, adminState }, this.env.NATS_REQUEST_TIMEOUT_MS));
  }

  /** Forgets a host (its credential too: it must join again). The monitor refuses (409) while it has live sandboxes and is not dead. */
  async remove(nodeId: string): Promise<void> {
    const reply = await this.onNode(nodeId, () => this.messaging.request(MonitorSubjects.nodesRemove, { hostId: nodeId }, this.env.NATS_REQUEST_TIMEOUT_MS));
    if (!reply.removed) throw new NodeNotFoundError(nodeId);
  }

  createJoinToken(hostId: string, ttlSeconds?: number): Promise<JoinTokenReply> {
    return this.messaging.request(
      MonitorSubjects.joinTokenCreate,
      { hostId, ...(ttlSeconds !== undefined ? { ttlSeconds } : {}) },
      this.env.NATS_REQUEST_TIMEOUT_MS,
    );
  }

  private async onNode<T>(nodeId: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      if (error instanceof KilnError && error.code === ErrorCode.NotFound) throw new NodeNotFoundError(nodeId);
      throw error;
    }
  }
}

function inThisCluster(clusterId: string | undefined): boolean {
  return clusterId === undefined || clusterId.toLowerCase() === CLUSTER_ID;
}
