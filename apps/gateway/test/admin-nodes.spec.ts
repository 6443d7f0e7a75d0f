import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { Controller, Module, UseFilters } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { MessagePattern, MicroserviceOptions, Payload } from '@nestjs/microservices';
import { ErrorCode, KilnError } from '@kiln/contracts';
import {
  FleetHostState,
  HostView,
  JoinTokenCreateCommand,
  JoinTokenReply,
  KilnRpcExceptionFilter,
  MonitorSubjects,
  NodeRef,
  NodeRemoveReply,
  NodeSetStatusCommand,
  NodesListReply,
  natsServerOptions,
} from '@kiln/messaging';
import { baseLoggerOptions } from '@kiln/telemetry';
import type { INestMicroservice } from '@nestjs/common';
import pino from 'pino';
import { RunningGateway } from '../src/gateway';
import { SeededTeam, TestStack } from './support/test-stack';

jest.setTimeout(60_000);

const ADMIN_TOKEN = `admin-${randomBytes(24).toString('hex')}`;
const NIL_CLUSTER = '00000000-0000-0000-0000-000000000000';
const MIB = 1024 * 1024;

/** E2B's required fields (openapi.yml components Node, NodeDetail, NodeMetrics, MachineInfo, DiskMetrics). */
const E2B_NODE_DETAIL_REQUIRED = ['id', 'serviceInstanceID', 'clusterID', 'status', 'statusChangedAt', 'sandboxCount', 'createSuccesses', 'createFails', 'version', 'commit', 'metrics', 'machineInfo'];
const E2B_NODE_REQUIRED = [...E2B_NODE_DETAIL_REQUIRED, 'sandboxStartingCount'];
const E2B_NODE_METRICS_REQUIRED = ['allocatedCPU', 'allocatedMemoryBytes', 'cpuPercent', 'memoryUsedBytes', 'cpuCount', 'memoryTotalBytes', 'disks', 'hugePagesTotal', 'hugePagesUsed', 'hugePagesReserved', 'hugePageSizeBytes'];
const E2B_MACHINE_INFO_REQUIRED = ['cpuFamily', 'cpuModel', 'cpuModelName', 'cpuArchitecture'];
const E2B_DISK_METRICS_REQUIRED = ['mountPoint', 'device', 'filesystemType', 'usedBytes', 'totalBytes'];
const E2B_NODE_STATUSES = ['ready', 'draining', 'connecting', 'unhealthy', 'standby'];

function hostView(hostId: string, state: FleetHostState, overrides: Partial<HostView> = {}): HostView {
  const adminState = state === 'draining' || state === 'cordoned' ? state : 'ready';
  return {
    hostId,
    grpcAddress: '10.0.0.1:5000',
    proxyUrl: 'https://10.0.0.1:5001',
    acceleration: 'kvm',
    agentVersion: '1.4.2',
    state,
    adminState,
    stateChangedAt: '2026-12-07T10:00:00.000Z',
    registeredAt: '2026-12-07T09:00:00.000Z',
    lastHeartbeatAt: '2026-12-07T10:05:00.000Z',
    capacity: { vcpus: 32, memoryMib: 65536, diskMib: 204800, sandboxes: 200 },
    usage: { vcpus: 6, memoryMib: 3072, diskMib: 30720, sandboxes: 3, diskUsedMib: 12000, starting: 1 },
    templates: ['base', 'python'],
    readyCloneTemplates: ['base'],
    machine: { cpuModelName: 'AMD EPYC 7B13', cpuArchitecture: 'x86_64', cpuCount: 64, memoryTotalMib: 131072 },
    createSuccesses: 17,
    createFails: 0,
    ...overrides,
  };
}

/**
 * Stands in for the host monitor's admin controller (apps/host-monitor, MonitorSubjects): a real NATS responder in
 * the host-monitor queue group with the fleet held in memory, answering as the contract in libs/messaging says
 * (unknown host: not_found; removing a live host with sandboxes: conflict). It records what the gateway asked.
 */
const fleet = new Map<string, HostView>();
const asked: Array<{ subject: string; payload: unknown }> = [];

@Controller()
@UseFilters(KilnRpcExceptionFilter)
class MonitorStandInController {
  @MessagePattern(MonitorSubjects.nodesList)
  list(): NodesListReply {
    asked.push({ subject: MonitorSubjects.nodesList, payload: {} });
    return { nodes: [...fleet.values()] };
  }

  @MessagePattern(MonitorSubjects.nodesGet)
  get(@Payload() ref: NodeRef): HostView {
    asked.push({ subject: MonitorSubjects.nodesGet, payload: ref });
    return known(ref.hostId);
  }

  @MessagePattern(MonitorSubjects.nodesSetStatus)
  setStatus(@Payload() command: NodeSetStatusCommand): HostView {
    asked.push({ subject: MonitorSubjects.nodesSetStatus, payload: command });
    const view = known(command.hostId);
    const live = view.state !== 'unhealthy' && view.state !== 'dead';
    const next = { ...view, adminState: command.adminState, state: live ? command.adminState : view.state, stateChangedAt: new Date().toISOString() };
    fleet.set(view.hostId, next);
    return next;
  }

  @MessagePattern(MonitorSubjects.nodesRemove)
  remove(@Payload() ref: NodeRef): NodeRemoveReply {
    asked.push({ subject: MonitorSubjects.nodesRemove, payload: ref });
    const view = known(ref.hostId);
    if (view.state !== 'dead' && view.usage.sandboxes > 0) {
      throw new KilnError(ErrorCode.Conflict, `host ${ref.hostId} still runs ${view.usage.sandboxes} sandboxes; drain it first`);
    }
    fleet.delete(ref.hostId);
    return { removed: true };
  }

  @MessagePattern(MonitorSubjects.joinTokenCreate)
  joinToken(@Payload() command: JoinTokenCreateCommand): JoinTokenReply {
    asked.push({ subject: MonitorSubjects.joinTokenCreate, payload: command });
    return { hostId: command.hostId, token: `kjt1.stand-in-${command.hostId}`, expiresAt: new Date(Date.now() + (command.ttlSeconds ?? 3600) * 1000).toISOString() };
  }
}

function known(hostId: string): HostView {
  const view = fleet.get(hostId);
  if (!view) throw new KilnError(ErrorCode.NotFound, `host ${hostId} is not registered`);
  return view;
}

@Module({ controllers: [MonitorStandInController] })
class MonitorStandInModule {}

interface Answer {
  status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

let stack: TestStack;
let gateway: RunningGateway;
let monitorStandIn: INestMicroservice | undefined;
let team: SeededTeam;

async function call(method: string, path: string, options: { token?: string | null; body?: unknown; headers?: Record<string, string>; via?: RunningGateway } = {}): Promise<Answer> {
  const headers: Record<string, string> = { ...(options.headers ?? {}) };
  if (options.token !== null) headers['x-admin-token'] = options.token ?? ADMIN_TOKEN;
  let body: string | undefined;
  if (options.body !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(options.body);
  }
  const response = await fetch((options.via ?? gateway).apiUrl + path, { method, headers, body });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : undefined };
}

async function startMonitorStandIn(): Promise<void> {
  monitorStandIn = await NestFactory.createMicroservice<MicroserviceOptions>(MonitorStandInModule, { ...natsServerOptions(stack.natsUrl, 'host-monitor'), logger: false });
  await monitorStandIn.listen();
}

beforeAll(async () => {
  stack = await TestStack.start({ scheduler: false, gateway: false });
  gateway = stack.gateway = await stack.startGateway({ KILN_ADMIN_TOKEN: ADMIN_TOKEN });
  team = await stack.seedTeam();
  await startMonitorStandIn();
});

afterAll(async () => {
  await monitorStandIn?.close();
  await stack?.stop();
});

beforeEach(() => {
  fleet.clear();
  asked.length = 0;
});

describe('admin API authentication (X-Admin-Token)', () => {
  it('refuses every admin route with 403 when the deployment sets no KILN_ADMIN_TOKEN, token or not', async () => {
    const disabled = await stack.startGateway();
    fleet.set('h1', hostView('h1', 'ready'));
    for (const [method, path, body] of [
      ['GET', '/nodes', undefined],
      ['GET', '/nodes/h1', undefined],
      ['POST', '/nodes/h1', { status: 'draining' }],
      ['DELETE', '/nodes/h1', undefined],
      ['POST', '/nodes/join-tokens', { hostId: 'h9' }],
    ] as const) {
      for (const token of [ADMIN_TOKEN, null]) {
        const answer = await call(method, path, { via: disabled, token, body });
        expect([method, path, answer.status]).toEqual([method, path, 403]);
        expect(answer.body).toEqual({ code: 403, message: 'the admin API is disabled: KILN_ADMIN_TOKEN is not set', error_code: 'permission_denied' });
      }
    }
    expect(asked).toEqual([]);
    expect(fleet.get('h1')?.state).toBe('ready');
  });

  it('answers 401 for a missing or wrong token, and an API key is no admin token', async () => {
    fleet.set('h1', hostView('h1', 'ready'));
    const missing = await call('GET', '/nodes', { token: null });
    expect(missing.status).toBe(401);
    expect(missing.body).toEqual({ code: 401, message: 'missing admin token: send it in the X-Admin-Token header', error_code: 'unauthenticated' });

    for (const wrong of [ADMIN_TOKEN.slice(0, -1), `${ADMIN_TOKEN}x`, 'short', ADMIN_TOKEN.toUpperCase()]) {
      const answer = await call('POST', '/nodes/h1', { token: wrong, body: { status: 'draining' } });
      expect(answer.status).toBe(401);
      expect(answer.body).toEqual({ code: 401, message: 'invalid admin token', error_code: 'unauthenticated' });
    }
    const withApiKey = await call('GET', '/nodes', { token: null, headers: { 'x-api-key': team.apiKey } });
    expect(withApiKey.status).toBe(401);
    // Nothing reached the monitor: the host is still ready.
    expect(asked).toEqual([]);
    expect(fleet.get('h1')?.state).toBe('ready');
  });

  it('counts bad admin tokens against the per-address budget of unauthenticated requests (429 past it)', async () => {
    // The budget is counted in the stack's Redis per client address: a proxied address of its own keeps the other tests' failures out of it.
    const limited = await stack.startGateway({ KILN_ADMIN_TOKEN: ADMIN_TOKEN, RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE: '3', TRUSTED_PROXIES: '127.0.0.1' });
    const from = { 'x-forwarded-for': `203.0.113.${1 + (process.pid % 250)}` };
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await call('GET', '/nodes', { via: limited, token: 'wrong-token', headers: from })).status);
    expect(statuses).toEqual([401, 401, 401, 429, 429]);
    // Over the budget the address is refused before the token is even compared: the right one gets 429 too.
    expect((await call('GET', '/nodes', { via: limited, headers: from })).status).toBe(429);
  });
  it("never writes the admin token into the request log", () => {
    const lines: string[] = [];
    const logger = pino(baseLoggerOptions('gateway', 'info'), { write: (line: string) => lines.push(line) });
    logger.info({ req: { method: 'GET', url: '/nodes', headers: { 'x-admin-token': ADMIN_TOKEN } } }, 'request completed');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]).req.headers['x-admin-token']).toBe('[Redacted]');
    expect(lines[0]).not.toContain(ADMIN_TOKEN);
  });
});

describe('GET /nodes and GET /nodes/{nodeID}', () => {
  it('maps a host view to E2B Node and NodeDetail exactly, with Kiln fields', async () => {
    const view = hostView('host-a.example', 'ready');
    fleet.set(view.hostId, view);
    const expectedDetail = {
      id: 'host-a.example',
      serviceInstanceID: 'host-a.example',
      clusterID: NIL_CLUSTER,
      status: 'ready',
      statusChangedAt: '2026-12-07T10:00:00.000Z',
      sandboxCount: 3,
      metrics: {
        allocatedCPU: 6,
        cpuPercent: 0,
        cpuCount: 32,
        allocatedMemoryBytes: 3072 * MIB,
        memoryUsedBytes: 3072 * MIB,
        memoryTotalBytes: 65536 * MIB,
        hugePagesTotal: 0,
        hugePagesUsed: 0,
        hugePagesReserved: 0,
        hugePageSizeBytes: 0,
        disks: [{ mountPoint: '/var/lib/kiln', device: '', filesystemType: '', usedBytes: 12000 * MIB, totalBytes: 204800 * MIB }],
      },
      createSuccesses: 17,
      createFails: 0,
      version: '1.4.2',
      commit: '',
      machineInfo: { cpuFamily: '', cpuModel: '', cpuModelName: 'AMD EPYC 7B13', cpuArchitecture: 'x86_64' },
      kilnState: 'ready',
      adminState: 'ready',
      lastHeartbeatAt: '2026-12-07T10:05:00.000Z',
      acceleration: 'kvm',
      capacity: { vcpus: 32, memoryMib: 65536, diskMib: 204800, sandboxes: 200 },
      usage: { vcpus: 6, memoryMib: 3072, diskMib: 30720, sandboxes: 3, diskUsedMib: 12000, starting: 1 },
      templates: ['base', 'python'],
      readyCloneTemplates: ['base'],
    };

    const listed = await call('GET', '/nodes');
    expect(listed.status).toBe(200);
    expect(listed.body).toEqual([{ ...expectedDetail, sandboxStartingCount: 1 }]);

    const detail = await call('GET', '/nodes/host-a.example');
    expect(detail.status).toBe(200);
    expect(detail.body).toEqual(expectedDetail);
    expect(asked).toEqual([
      { subject: MonitorSubjects.nodesList, payload: {} },
      { subject: MonitorSubjects.nodesGet, payload: { hostId: 'host-a.example' } },
    ]);

    // Every field E2B requires is there, with E2B's types.
    for (const field of E2B_NODE_REQUIRED) expect(listed.body[0]).toHaveProperty(field);
    for (const field of E2B_NODE_DETAIL_REQUIRED) expect(detail.body).toHaveProperty(field);
    for (const field of E2B_NODE_METRICS_REQUIRED) expect(detail.body.metrics).toHaveProperty(field);
    for (const field of E2B_MACHINE_INFO_REQUIRED) expect(typeof detail.body.machineInfo[field]).toBe('string');
    for (const field of E2B_DISK_METRICS_REQUIRED) expect(detail.body.metrics.disks[0]).toHaveProperty(field);
  });

  it('reports each Kiln state as an E2B status (cordoned is standby, dead is unhealthy) and keeps the exact one in kilnState', async () => {
    const expected: Record<FleetHostState, string> = { ready: 'ready', draining: 'draining', cordoned: 'standby', unhealthy: 'unhealthy', dead: 'unhealthy' };
    for (const state of Object.keys(expected) as FleetHostState[]) fleet.set(`h-${state}`, hostView(`h-${state}`, state));
    // An agent from before the fleet: no machine info, no disk capacity.
    fleet.set('h-old', hostView('h-old', 'ready', { machine: undefined, capacity: { vcpus: 4, memoryMib: 4096, diskMib: 0, sandboxes: 10 } }));

    const listed = (await call('GET', '/nodes')).body as Array<{ id: string; status: string; kilnState: string; metrics: { disks: unknown[] }; machineInfo: object }>;
    expect(listed.map((n) => n.id)).toEqual(['h-cordoned', 'h-dead', 'h-draining', 'h-old', 'h-ready', 'h-unhealthy']);
    for (const node of listed) {
      expect(E2B_NODE_STATUSES).toContain(node.status);
      if (node.id === 'h-old') continue;
      const state = node.id.slice(2) as FleetHostState;
      expect([node.id, node.status, node.kilnState]).toEqual([node.id, expected[state], state]);
    }
    const old = listed.find((n) => n.id === 'h-old')!;
    expect(old.metrics.disks).toEqual([]);
    expect(old.machineInfo).toEqual({ cpuFamily: '', cpuModel: '', cpuModelName: '', cpuArchitecture: '' });
  });

  it('answers 404 {code, message} for an unknown node, 400 for a malformed id, and filters by the one cluster', async () => {
    fleet.set('h1', hostView('h1', 'ready'));
    const unknown = await call('GET', '/nodes/nope');
    expect(unknown.status).toBe(404);
    expect(unknown.body).toEqual({ code: 404, message: 'node nope not found', error_code: 'not_found' });

    const malformed = await call('GET', `/nodes/${'x'.repeat(64)}`);
    expect(malformed.status).toBe(400);
    expect(malformed.body.message).toMatch(/^nodeID /);

    expect((await call('GET', `/nodes?clusterID=${NIL_CLUSTER}`)).body.map((n: { id: string }) => n.id)).toEqual(['h1']);
    expect((await call('GET', `/nodes/h1?clusterID=${NIL_CLUSTER}`)).status).toBe(200);
    const otherCluster = '3f1c2a4e-9b7d-4c55-8e21-0d6f5a7b9c10';
    expect(await call('GET', `/nodes?clusterID=${otherCluster}`)).toEqual({ status: 200, body: [] });
    expect((await call('GET', `/nodes/h1?clusterID=${otherCluster}`)).status).toBe(404);
    const badCluster = await call('GET', '/nodes?clusterID=not-a-uuid');
    expect(badCluster.status).toBe(400);
    expect(badCluster.body.message).toContain('clusterID');
  });
});

describe('POST /nodes/{nodeID} (status change)', () => {
  it('drains, cordons (E2B standby) and returns a host to ready, answering 204', async () => {
    fleet.set('h1', hostView('h1', 'ready'));
    const steps: Array<[string, string, string]> = [
      // [status sent, status read back, Kiln state]
      ['draining', 'draining', 'draining'],
      ['standby', 'standby', 'cordoned'],
      ['ready', 'ready', 'ready'],
      ['cordoned', 'standby', 'cordoned'],
    ];
    for (const [sent, status, kilnState] of steps) {
      const changed = await call('POST', '/nodes/h1', { body: { status: sent, clusterID: NIL_CLUSTER } });
      expect([sent, changed.status, changed.body]).toEqual([sent, 204, undefined]);
      const read = (await call('GET', '/nodes/h1')).body;
      expect([sent, read.status, read.kilnState, read.adminState]).toEqual([sent, status, kilnState, kilnState]);
    }
    expect(asked.filter((a) => a.subject === MonitorSubjects.nodesSetStatus).map((a) => a.payload)).toEqual([
      { hostId: 'h1', adminState: 'draining' },
      { hostId: 'h1', adminState: 'cordoned' },
      { hostId: 'h1', adminState: 'ready' },
      { hostId: 'h1', adminState: 'cordoned' },
    ]);
  });

  it('answers 400 naming the status for one an operator cannot set or a missing body, 404 for an unknown node', async () => {
    fleet.set('h1', hostView('h1', 'ready'));
    for (const body of [{ status: 'unhealthy' }, { status: 'connecting' }, { status: 'dead' }, { status: 7 }, {}]) {
      const answer = await call('POST', '/nodes/h1', { body });
      expect([body, answer.status]).toEqual([body, 400]);
      expect(answer.body).toEqual({ code: 400, message: expect.stringContaining('status must be one of ready, draining, standby, cordoned'), error_code: 'invalid_argument' });
    }
    const badCluster = await call('POST', '/nodes/h1', { body: { status: 'draining', clusterID: 'x' } });
    expect(badCluster.status).toBe(400);
    expect(badCluster.body.message).toContain('clusterID');
    expect(asked).toEqual([]);

    const unknown = await call('POST', '/nodes/nope', { body: { status: 'draining' } });
    expect(unknown.status).toBe(404);
    expect(unknown.body).toEqual({ code: 404, message: 'node nope not found', error_code: 'not_found' });
    expect(fleet.get('h1')?.state).toBe('ready');
  });
});

describe('DELETE /nodes/{nodeID}', () => {
  it('removes a dead or empty host (204), refuses a live one with sandboxes (409), and 404s an unknown one', async () => {
    fleet.set('busy', hostView('busy', 'draining'));
    fleet.set('gone', hostView('gone', 'dead'));
    fleet.set('empty', hostView('empty', 'ready', { usage: { vcpus: 0, memoryMib: 0, diskMib: 0, sandboxes: 0, diskUsedMib: 10, starting: 0 } }));

    const busy = await call('DELETE', '/nodes/busy');
    expect(busy.status).toBe(409);
    expect(busy.body).toEqual({ code: 409, message: 'host busy still runs 3 sandboxes; drain it first', error_code: 'conflict' });
    expect((await call('DELETE', '/nodes/gone')).status).toBe(204);
    expect((await call('DELETE', '/nodes/empty')).status).toBe(204);
    expect([...fleet.keys()]).toEqual(['busy']);

    const again = await call('DELETE', '/nodes/gone');
    expect(again.status).toBe(404);
    expect(again.body).toEqual({ code: 404, message: 'node gone not found', error_code: 'not_found' });
  });
});

describe('POST /nodes/join-tokens', () => {
  it("mints a one-time token through the monitor (201) and validates the host id and lifetime", async () => {
    const minted = await call('POST', '/nodes/join-tokens', { body: { hostId: 'new-host.rack2', ttlSeconds: 600 } });
    expect(minted.status).toBe(201);
    expect(minted.body).toEqual({ hostId: 'new-host.rack2', token: 'kjt1.stand-in-new-host.rack2', expiresAt: expect.any(String) });
    expect(Date.parse(minted.body.expiresAt) - Date.now()).toBeGreaterThan(590_000);
    expect(asked).toEqual([{ subject: MonitorSubjects.joinTokenCreate, payload: { hostId: 'new-host.rack2', ttlSeconds: 600 } }]);

    expect((await call('POST', '/nodes/join-tokens', { body: { hostId: 'h2' } })).status).toBe(201);
    expect(asked[1].payload).toEqual({ hostId: 'h2' });

    for (const [body, field] of [
      [{}, 'hostId'],
      [{ hostId: 'bad host' }, 'hostId'],
      [{ hostId: 'x'.repeat(64) }, 'hostId'],
      [{ hostId: 'h3', ttlSeconds: 0 }, 'ttlSeconds'],
      [{ hostId: 'h3', ttlSeconds: 1.5 }, 'ttlSeconds'],
    ] as const) {
      const answer = await call('POST', '/nodes/join-tokens', { body });
      expect([body, answer.status]).toEqual([body, 400]);
      expect(answer.body.message).toContain(field);
    }
    expect(asked).toHaveLength(2);
  });
});

describe('the admin API without the host monitor', () => {
  it('answers 503 with Retry-After when no monitor answers', async () => {
    await monitorStandIn?.close();
    monitorStandIn = undefined;
    try {
      const response = await fetch(`${gateway.apiUrl}/nodes`, { headers: { 'x-admin-token': ADMIN_TOKEN } });
      expect(response.status).toBe(503);
      expect(response.headers.get('retry-after')).toMatch(/^[1-9]\d*$/);
      expect(await response.json()).toEqual({ code: 503, message: `no service answers ${MonitorSubjects.nodesList}`, error_code: 'unavailable' });
    } finally {
      await startMonitorStandIn();
    }
    expect((await call('GET', '/nodes')).status).toBe(200);
  });
});

describe('OpenAPI document', () => {
  it('describes the admin routes and their X-Admin-Token scheme', async () => {
    const document = (await call('GET', '/openapi.json', { token: null })).body;
    expect(Object.keys(document.paths)).toEqual(expect.arrayContaining(['/nodes', '/nodes/{nodeID}', '/nodes/join-tokens']));
    expect(Object.keys(document.paths['/nodes/{nodeID}']).sort()).toEqual(['delete', 'get', 'post']);
    expect(document.paths['/nodes'].get.security).toEqual([{ AdminApiKeyAuth: [] }]);
    expect(document.components.securitySchemes.AdminApiKeyAuth).toMatchObject({ type: 'apiKey', in: 'header', name: 'X-Admin-Token' });
    expect(document.components.schemas.NodeStatusChangeDto.properties.status.enum).toEqual(['ready', 'draining', 'standby', 'cordoned']);
    expect(document.components.schemas.NodeStatusChangeDto.properties.clusterID).toMatchObject({ type: 'string', format: 'uuid' });
    expect(document.components.schemas.JoinTokenCreateDto).toMatchObject({ required: ['hostId'], properties: { ttlSeconds: { type: 'integer', minimum: 1 } } });
    expect(document.paths['/nodes'].get.responses['200'].content['application/json'].schema).toEqual({ type: 'array', items: { $ref: '#/components/schemas/NodeBody' } });
    expect(document.components.schemas.NodeBody.required).toEqual(expect.arrayContaining(E2B_NODE_REQUIRED));
    expect(document.components.schemas.NodeDetailBody.required).toEqual(expect.arrayContaining(E2B_NODE_DETAIL_REQUIRED));
    expect(document.components.schemas.NodeMetricsBody.required).toEqual(expect.arrayContaining(E2B_NODE_METRICS_REQUIRED));
  });
});
