import 'reflect-metadata';
import { Agent, IncomingMessage, Server, createServer, request } from 'node:http';
import type { HostAgentEnv } from '@kiln/config';
import { fileSignature } from '@kiln/contracts/envd-auth';
import { MetricsRegistry } from '@kiln/telemetry';
import type { SandboxManager } from '../sandbox/sandbox-manager.service';
import { SandboxTrafficProxy } from './sandbox-traffic-proxy';

/** A loopback address of its own, so the stand-in guest can take envd's fixed port without clashing. */
const GUEST_ADDRESS = '127.77.0.1';
const ENVD = 49983;
const TOKEN = 'host-proxy-test-token';

/** Stands in for a guest behind a network slot: records every request that reaches it. */
class GuestStandIn {
  readonly seen: Array<{ method?: string; url?: string; headers: IncomingMessage['headers']; body: string }> = [];
  upgrades = 0;
  private readonly servers: Server[] = [];

  async listen(port: number): Promise<number> {
    const server = createServer(async (req, res) => {
      let body = '';
      for await (const chunk of req) body += String(chunk);
      this.seen.push({ method: req.method, url: req.url, headers: req.headers, body });
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ reached: true }));
    });
    server.on('upgrade', (_req, socket) => {
      this.upgrades++;
      socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    });
    this.servers.push(server);
    await new Promise<void>((resolve) => server.listen(port, GUEST_ADDRESS, resolve));
    const address = server.address();
    return typeof address === 'object' && address ? address.port : port;
  }

  async close(): Promise<void> {
    for (const server of this.servers) {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  }
}

let guest: GuestStandIn;
let userPort: number;
let proxy: SandboxTrafficProxy;
let metrics: MetricsRegistry;
const records = new Map<string, { envdAccessToken?: string }>();
const agents: Agent[] = [];

function liveSandbox(id: string) {
  const record = records.get(id);
  if (!record) return undefined;
  const guestConnections = new Agent({ keepAlive: false });
  agents.push(guestConnections);
  return { record, state: 'running', slot: { hostAddress: GUEST_ADDRESS }, guestConnections };
}

async function counted(outcome: string): Promise<number> {
  const metric = metrics.registry.getSingleMetric('kiln_agent_proxy_requests_total')!;
  return (await metric.get()).values.find((v) => v.labels.outcome === outcome)?.value ?? 0;
}

function send(path: string, headers: Record<string, string>, init: { method?: string; body?: string } = {}) {
  return fetch(`http://127.0.0.1:${proxy.port}${path}`, { ...init, headers });
}

const envd = (id: string, extra: Record<string, string> = {}) => ({ 'e2b-sandbox-id': id, 'e2b-sandbox-port': String(ENVD), ...extra });

beforeAll(async () => {
  guest = new GuestStandIn();
  await guest.listen(ENVD);
  userPort = await guest.listen(0);
  records.set('secured', { envdAccessToken: TOKEN });
  records.set('legacy', {});
  metrics = new MetricsRegistry();
  const sandboxes = { get: (id: string) => liveSandbox(id) } as unknown as SandboxManager;
  proxy = new SandboxTrafficProxy({ PROXY_PORT: 0 } as HostAgentEnv, sandboxes, metrics);
  await proxy.onApplicationBootstrap();
});

afterAll(async () => {
  await proxy?.onApplicationShutdown();
  await guest?.close();
  for (const agent of agents) agent.destroy();
});

beforeEach(() => {
  guest.seen.length = 0;
});

describe('host agent proxy: the envd port', () => {
  it('refuses a request without the token with 401, counts it, and the guest sees nothing', async () => {
    const forwardedBefore = await counted('forwarded');
    const refusedBefore = await counted('refused_401');
    const response = await send('/process.Process/Start', envd('secured', { 'content-type': 'application/json' }), { method: 'POST', body: '{"process":{"cmd":"id"}}' });
    expect(response.status).toBe(401);
    expect(await response.json()).toEqual({ code: 401, message: expect.stringContaining('access token') });
    expect(guest.seen).toEqual([]);
    expect(await counted('forwarded')).toBe(forwardedBefore);
    expect(await counted('refused_401')).toBe(refusedBefore + 1);
  });

  it('refuses a wrong token with 401 and forwards the right one', async () => {
    expect((await send('/envs', envd('secured', { 'x-access-token': 'wrong' }))).status).toBe(401);
    expect(guest.seen).toEqual([]);
    const forwardedBefore = await counted('forwarded');
    const response = await send('/envs', envd('secured', { 'x-access-token': TOKEN }));
    expect(response.status).toBe(200);
    expect(guest.seen).toMatchObject([{ method: 'GET', url: '/envs' }]);
    expect(await counted('forwarded')).toBe(forwardedBefore + 1);
  });

  it('refuses /init with 403 even with the right token', async () => {
    const before = await counted('refused_403');
    const response = await send('/init', envd('secured', { 'x-access-token': TOKEN, 'content-type': 'application/json' }), { method: 'POST', body: '{"accessToken":"mine"}' });
    expect(response.status).toBe(403);
    expect(guest.seen).toEqual([]);
    expect(await counted('refused_403')).toBe(before + 1);
  });

  it('lets /health and a signed /files URL through without the token header', async () => {
    expect((await send('/health', envd('secured'))).status).toBe(200);
    const signature = fileSignature('/tmp/a', 'read', 'user', TOKEN);
    const signed = `/files?path=/tmp/a&username=user&signature=${encodeURIComponent(signature)}`;
    expect((await send(signed, envd('secured'))).status).toBe(200);
    expect(guest.seen.map((s) => s.url)).toEqual(['/health', signed]);
  });

  it('fails closed for a sandbox whose record has no token: only /health passes', async () => {
    expect((await send('/health', envd('legacy'))).status).toBe(200);
    expect((await send('/envs', envd('legacy', { 'x-access-token': '' }))).status).toBe(401);
    expect(guest.seen.map((s) => s.url)).toEqual(['/health']);
  });

  it('refuses a WebSocket upgrade without the token before it reaches the guest', async () => {
    const upgradesBefore = guest.upgrades;
    const status = await new Promise<number>((resolve, reject) => {
      const req = request({
        host: '127.0.0.1',
        port: proxy.port,
        path: '/',
        headers: { ...envd('secured'), connection: 'Upgrade', upgrade: 'websocket' },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('upgrade', () => reject(new Error('unexpected upgrade')));
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(401);
    expect(guest.upgrades).toBe(upgradesBefore);
  });
});

describe('host agent proxy: user ports and routing', () => {
  it('forwards user-port traffic (traffic tokens are the gateway’s to check) without the traffic token header', async () => {
    const response = await send('/app', { 'e2b-sandbox-id': 'secured', 'e2b-sandbox-port': String(userPort), 'e2b-traffic-access-token': 't' });
    expect(response.status).toBe(200);
    expect(guest.seen).toHaveLength(1);
    expect(guest.seen[0].headers['e2b-traffic-access-token']).toBeUndefined();
  });

  it('answers 502 for a sandbox it does not have and 400 for a request naming none', async () => {
    const before = await counted('no_sandbox');
    expect((await send('/', envd('ghost', { 'x-access-token': TOKEN }))).status).toBe(502);
    expect(await counted('no_sandbox')).toBe(before + 1);
    expect((await send('/', {})).status).toBe(400);
    expect(guest.seen).toEqual([]);
  });
});
