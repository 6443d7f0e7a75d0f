import { Body, Controller, Delete, Get, HttpCode, Param, Post, Query, UseGuards } from '@nestjs/common';
import { ApiBody, ApiCreatedResponse, ApiNoContentResponse, ApiOkResponse, ApiOperation, ApiQuery, ApiSecurity, ApiTags } from '@nestjs/swagger';
import { PublicRoute } from '../auth/public-route.decorator';
import { PayloadPipe } from '../validation/payload.pipe';
import { AdminTokenGuard } from './admin-token.guard';
import { NodeIdPipe } from './node-id.pipe';
import { CLUSTER_ID, JoinTokenCreateDto, NodeQueryDto, NodeStatusChangeDto } from './node-request.dto';
import { JoinTokenBody, NodeBody, NodeDetailBody, toNodeBody, toNodeDetailBody } from './node-responses';
import { NodesService } from './nodes.service';

const CLUSTER_QUERY_DOC = { name: 'clusterID', required: false, type: String, description: `Kiln runs one cluster: ${CLUSTER_ID}` };

/**
 * E2B's admin node routes (`X-Admin-Token`, not an API key) and Kiln's join tokens for new hosts. Thin: the host
 * monitor answers everything (NodesService). `POST /nodes/join-tokens` is a static route, so the router prefers it to
 * `POST /nodes/{nodeID}` (a host named `join-tokens` cannot be drained through the API).
 */
@ApiTags('admin')
@ApiSecurity('AdminApiKeyAuth')
// No API key: the admin token guard decides.
@PublicRoute()
@UseGuards(AdminTokenGuard)
@Controller('nodes')
export class NodesController {
  constructor(private readonly nodes: NodesService) {}

  @Get()
  @ApiOperation({ summary: 'List the hosts (nodes)' })
  @ApiQuery(CLUSTER_QUERY_DOC)
  @ApiOkResponse({ type: [NodeBody] })
  async list(@Query(new PayloadPipe(NodeQueryDto)) query: NodeQueryDto): Promise<NodeBody[]> {
    return (await this.nodes.list(query.clusterID)).map(toNodeBody);
  }

  @Post('join-tokens')
  @HttpCode(201)
  @ApiOperation({ summary: "Mint a one-time join token for a new host (its agent's KILN_JOIN_TOKEN)" })
  @ApiBody({ type: JoinTokenCreateDto })
  @ApiCreatedResponse({ type: JoinTokenBody })
  async createJoinToken(@Body(new PayloadPipe(JoinTokenCreateDto)) body: JoinTokenCreateDto): Promise<JoinTokenBody> {
    const minted = await this.nodes.createJoinToken(body.hostId, body.ttlSeconds);
    return { hostId: minted.hostId, token: minted.token, expiresAt: minted.expiresAt };
  }

  @Get(':nodeID')
  @ApiOperation({ summary: 'One host (node)' })
  @ApiQuery(CLUSTER_QUERY_DOC)
  @ApiOkResponse({ type: NodeDetailBody })
  async get(@Param('nodeID', NodeIdPipe) nodeId: string, @Query(new PayloadPipe(NodeQueryDto)) query: NodeQueryDto): Promise<NodeDetailBody> {
    return toNodeDetailBody(await this.nodes.get(nodeId, query.clusterID));
  }

  @Post(':nodeID')
  @HttpCode(204)
  @ApiOperation({ summary: 'Drain (draining), cordon (standby or cordoned) or return a host to ready' })
  @ApiBody({ type: NodeStatusChangeDto })
  @ApiNoContentResponse({ description: 'The status was changed' })
  async setStatus(@Param('nodeID', NodeIdPipe) nodeId: string, @Body(new PayloadPipe(NodeStatusChangeDto)) body: NodeStatusChangeDto): Promise<void> {
    await this.nodes.setStatus(nodeId, body.status, body.clusterID);
  }

  @Delete(':nodeID')
  @HttpCode(204)
  @ApiOperation({ summary: 'Remove a host: refused (409) while it has live sandboxes and is not dead; it must join again with a new token' })
  @ApiNoContentResponse({ description: 'The host was removed' })
  async remove(@Param('nodeID', NodeIdPipe) nodeId: string): Promise<void> {
    await this.nodes.remove(nodeId);
  }
}
