import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { ClientProxyFactory, Transport } from '@nestjs/microservices';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { NestFactory } from '@nestjs/core';
import { HostMonitorEnv, loadConfig } from '@kiln/config';
import { HostHeartbeat, HostRegistration, MessagingClient, hostHeartbeatSubject, hostRegisterSubject, natsServerOptions } from '@kiln/messaging';
import { AppModule as HostMonitorAppModule, SERVICE_NAME as HOST_MONITOR_SERVICE } from '../../host-monitor/src/app.module';
import { RunningGateway } from '../src/gateway';
import { TestStack } from './support/test-stack';

jest.setTimeout(60_000);

/*
 * The admin API against the real host monitor (apps/host-monitor, in-process, on the stack's private NATS with
 * JetStream and its database): a host joins with a token minted through POST /nodes/join-tokens, heartbeats, and is
 * listed, drained, cordoned and removed through the gateway. Host agents are stood in for by NATS requests on their
 * own subjects, exactly what control-plane-link sends.
 */

const ADMIN_TOKEN = `admin-${randomBytes(24).toString('hex')}`;
const HOST_ID = `fleet-e2e-${randomBytes(3).toString('hex')}.rack1`;

interface Answer {
  status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

let stack: TestStack;
let gateway: RunningGateway;
let monitor: NestFastifyApplication;
let agent: MessagingClient;

async function call(method: string, path: string, body?: unknown): Promise<Answer> {
  const headers: Record<string, string> = { 'x-admin-token': ADMIN_TOKEN };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(gateway.apiUrl + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : undefined };
}

function registration(overrides: Partial<HostRegistration>): HostRegistration {
  return {
    hostId: HOST_ID,
    grpcAddress: '127.0.0.1:1',
    proxyUrl: 'http://127.0.0.1:1',
    acceleration: 'kvm',
    version: 'agent-7.1',
    capacity: { vcpus: 16, memoryMib: 32768, sandboxes: 100, diskMib: 100_000 },
    templates: ['base'],
    readyCloneTemplates: [],
    machine: { cpuModelName: 'Fleet Test CPU', cpuArchitecture: 'x86_64', cpuCount: 16, memoryTotalMib: 65536 },
    ...overrides,
  };
}

function heartbeat(sandboxes: number): HostHeartbeat {
  return {
    hostId: HOST_ID,
    at: new Date().toISOString(),
    capacity: { vcpus: 16, memoryMib: 32768, sandboxes: 100, diskMib: 100_000 },
    usage: { vcpus: 2 * sandboxes, memoryMib: 1024 * sandboxes, sandboxes, diskMib: 4096 * sandboxes, diskUsedMib: 777, starting: 0 },
    templates: ['base'],
    readyCloneTemplates: ['base'],
    sandboxIds: [],
    acceleration: 'kvm',
    agentVersion: 'agent-7.2',
  };
}

/** Polls GET /nodes/{id} until `accept` holds (heartbeats are events: the monitor takes them in asynchronously). */
async function nodeWhen(accept: (node: Answer) => boolean): Promise<Answer> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const node = await call('GET', `/nodes/${HOST_ID}`);
    if (accept(node) || Date.now() > deadline) return node;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

beforeAll(async () => {
  stack = await TestStack.start({ scheduler: false, gateway: false });
  gateway = stack.gateway = await stack.startGateway({ KILN_ADMIN_TOKEN: ADMIN_TOKEN });
  const env = loadConfig(HostMonitorEnv, {
    DATABASE_URL: stack.databaseUrl,
    NATS_URL: stack.natsUrl,
    HOST_JOIN_TOKEN_KEY: randomBytes(32).toString('hex'),
    LOG_LEVEL: 'warn',
  });
  monitor = await NestFactory.create<NestFastifyApplication>(HostMonitorAppModule.forRoot(env), new FastifyAdapter(), { logger: false });
  monitor.connectMicroservice(natsServerOptions(env.NATS_URL, HOST_MONITOR_SERVICE));
  await monitor.init();
  await monitor.startAllMicroservices();
  await monitor.listen(0, '127.0.0.1');
  agent = new MessagingClient(ClientProxyFactory.create({ transport: Transport.NATS, options: { servers: [stack.natsUrl] } }));
  await agent.connect();
});

afterAll(async () => {
  await agent?.onApplicationShutdown();
  await monitor?.close();
  await stack?.stop();
});

describe('admin API over the real host monitor', () => {
  it('mints a join token a host registers with once, then lists, drains, cordons and removes the host', async () => {
    const minted = await call('POST', '/nodes/join-tokens', { hostId: HOST_ID, ttlSeconds: 600 });
    expect(minted.status).toBe(201);
    expect(minted.body).toEqual({ hostId: HOST_ID, token: expect.stringMatching(/^kjt1\./), expiresAt: expect.any(String) });
    const ttlMs = Date.parse(minted.body.expiresAt) - Date.now();
    expect(ttlMs).toBeGreaterThan(590_000);
    expect(ttlMs).toBeLessThanOrEqual(601_000);

    const joined = await agent.request(hostRegisterSubject(HOST_ID), registration({ token: minted.body.token }));
    expect(joined).toMatchObject({ accepted: true, heartbeatIntervalSeconds: expect.any(Number), hostCredential: expect.any(String) });
    // One time only: the same token cannot admit the host (or anyone posing as it) again.
    await expect(agent.request(hostRegisterSubject(HOST_ID), registration({ token: minted.body.token }))).rejects.toMatchObject({ code: 'unauthenticated' });

    await agent.emit(hostHeartbeatSubject(HOST_ID), heartbeat(3));
    const detail = await nodeWhen((node) => node.body?.sandboxCount === 3);
    expect(detail.status).toBe(200);
    expect(detail.body).toMatchObject({
      id: HOST_ID,
      serviceInstanceID: HOST_ID,
      clusterID: '00000000-0000-0000-0000-000000000000',
      status: 'ready',
      kilnState: 'ready',
      adminState: 'ready',
      sandboxCount: 3,
      version: 'agent-7.2',
      commit: '',
      machineInfo: { cpuFamily: '', cpuModel: '', cpuModelName: 'Fleet Test CPU', cpuArchitecture: 'x86_64' },
      metrics: {
        allocatedCPU: 6,
        cpuCount: 16,
        allocatedMemoryBytes: 3072 * 1024 * 1024,
        memoryTotalBytes: 32768 * 1024 * 1024,
        disks: [{ mountPoint: '/var/lib/kiln', device: '', filesystemType: '', usedBytes: 777 * 1024 * 1024, totalBytes: 100_000 * 1024 * 1024 }],
      },
      capacity: { vcpus: 16, memoryMib: 32768, diskMib: 100_000, sandboxes: 100 },
      templates: ['base'],
      readyCloneTemplates: ['base'],
    });
    expect(detail.body).not.toHaveProperty('sandboxStartingCount');
    const listed = await call('GET', '/nodes');
    expect(listed.body.find((node: { id: string }) => node.id === HOST_ID)).toMatchObject({ status: 'ready', sandboxStartingCount: 0 });

    expect((await call('POST', `/nodes/${HOST_ID}`, { status: 'draining' })).status).toBe(204);
    expect((await call('GET', `/nodes/${HOST_ID}`)).body).toMatchObject({ status: 'draining', kilnState: 'draining', adminState: 'draining' });
    expect((await call('POST', `/nodes/${HOST_ID}`, { status: 'standby' })).status).toBe(204);
    expect((await call('GET', `/nodes/${HOST_ID}`)).body).toMatchObject({ status: 'standby', kilnState: 'cordoned', adminState: 'cordoned' });

    // Live with sandboxes: refused. Once they are gone, removed; the host is then unknown.
    const busy = await call('DELETE', `/nodes/${HOST_ID}`);
    expect(busy.status).toBe(409);
    expect(busy.body).toMatchObject({ code: 409, error_code: 'conflict' });
    await agent.emit(hostHeartbeatSubject(HOST_ID), heartbeat(0));
    expect((await nodeWhen((node) => node.body?.sandboxCount === 0)).body.sandboxCount).toBe(0);
    expect((await call('DELETE', `/nodes/${HOST_ID}`)).status).toBe(204);
    const gone = await call('GET', `/nodes/${HOST_ID}`);
    expect(gone).toEqual({ status: 404, body: { code: 404, message: `node ${HOST_ID} not found`, error_code: 'not_found' } });
    expect((await call('POST', `/nodes/${HOST_ID}`, { status: 'ready' })).status).toBe(404);
    expect((await call('DELETE', `/nodes/${HOST_ID}`)).status).toBe(404);
    // Removal revoked the credential: the host must join again with a new token.
    await expect(agent.request(hostRegisterSubject(HOST_ID), registration({ credential: joined.hostCredential }))).rejects.toMatchObject({ code: 'unauthenticated' });
  });
});
