import { IsIn, IsInt, IsOptional, IsString, IsUUID, Matches, Max, Min } from 'class-validator';
import type { HostAdminState } from '@kiln/messaging';

/** A host id as host agents register it (KILN_HOST_ID): also the node's id in the admin API. */
export const NODE_ID_PATTERN = /^[a-zA-Z0-9._-]{1,63}$/;
export const NODE_ID_RULE = 'must be 1-63 characters of letters, digits, dot, underscore and dash';

/**
 * The statuses an operator may set (E2B's NodeStatus minus `connecting` and `unhealthy`, which only liveness
 * decides), and the admin state each means: E2B's `standby` is Kiln's `cordoned` (no new sandboxes, may return to
 * ready); `cordoned` is accepted under its own name too.
 */
export const ADMIN_STATE_BY_NODE_STATUS = {
  ready: 'ready',
  draining: 'draining',
  standby: 'cordoned',
  cordoned: 'cordoned',
} as const satisfies Record<string, HostAdminState>;

export type SettableNodeStatus = keyof typeof ADMIN_STATE_BY_NODE_STATUS;
const SETTABLE_NODE_STATUSES = Object.keys(ADMIN_STATE_BY_NODE_STATUS);

/** Kiln runs one cluster; E2B's clusterID is the nil UUID for it. */
export const CLUSTER_ID = '00000000-0000-0000-0000-000000000000';

/** Query of `GET /nodes` and `GET /nodes/{nodeID}`. */
export class NodeQueryDto {
  @IsOptional() @IsUUID('all', { message: 'clusterID must be a UUID' })
  clusterID?: string;
}

/** E2B's NodeStatusChange (`POST /nodes/{nodeID}`). */
export class NodeStatusChangeDto {
  @IsIn(SETTABLE_NODE_STATUSES, {
    message: `status must be one of ${SETTABLE_NODE_STATUSES.join(', ')} (connecting and unhealthy are decided by the host's heartbeats)`,
  })
  status: SettableNodeStatus;

  @IsOptional() @IsUUID('all', { message: 'clusterID must be a UUID' })
  clusterID?: string;
}

/** Longest join token lifetime the gateway passes on; the host monitor caps it further (HOST_JOIN_TOKEN_MAX_TTL_SECONDS). */
export const MAX_JOIN_TOKEN_TTL_SECONDS = 30 * 24 * 60 * 60;

/** `POST /nodes/join-tokens`: a one-time token a new host agent registers with (KILN_JOIN_TOKEN). */
export class JoinTokenCreateDto {
  @IsString() @Matches(NODE_ID_PATTERN, { message: `hostId ${NODE_ID_RULE}` })
  hostId: string;

  @IsOptional() @IsInt() @Min(1) @Max(MAX_JOIN_TOKEN_TTL_SECONDS)
  ttlSeconds?: number;
}
