import 'reflect-metadata';
import { createHash } from 'node:crypto';
import { IncomingMessage, Server, createServer, request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { SandboxState } from '@kiln/contracts';
import { fileSignature } from '@kiln/contracts/envd-auth';
import { MetricsRegistry } from '@kiln/telemetry';
import { SandboxRouteCache } from '../src/traffic/sandbox-route.cache';
import { freePort } from '@kiln/testing';
import { SeededTeam, TestStack } from './support/test-stack';
import { FakeHostAgent } from '../../scheduler/test/support/fake-host-agent';

jest.setTimeout(60_000);

/**
 * Stands in for a host agent's traffic proxy (the real one needs VMs): it records
 * what it received and offers streaming, upload, download and WebSocket endpoints.
 */
class UpstreamStandIn {
  readonly server: Server;
  /** Resolves the gate the /stream endpoint waits on before sending the rest of its body. */
  releaseStream?: () => void;
  /** Requests and upgrades that reached this "host agent" at all. */
  hits = 0;
  private readonly sockets = new Set<Socket>();

  constructor() {
    this.server = createServer((req, res) => void this.handle(req, res));
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    this.server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      this.hits++;
      socket.write(
        'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          `X-Seen-Sandbox: ${req.headers['e2b-sandbox-id']}\r\nX-Seen-Port: ${req.headers['e2b-sandbox-port']}\r\n\r\n`,
      );
      if (head.length) socket.write(head);
      socket.pipe(socket);
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    const address = this.server.address();
    return `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private async handle(req: IncomingMessage, res: import('node:http').ServerResponse): Promise<void> {
    this.hits++;
    const url = new URL(req.url ?? '/', 'http://upstream');
    if (url.pathname === '/upload') {
      const hash = createHash('sha256');
      let bytes = 0;
      for await (const chunk of req) {
        hash.update(chunk as Buffer);
        bytes += (chunk as Buffer).length;
      }
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ bytes, sha256: hash.digest('hex') }));
      return;
    }
    if (url.pathname === '/download') {
      const size = Number(url.searchParams.get('size'));
      const chunk = Buffer.alloc(64 * 1024, 7);
      res.setHeader('content-type', 'application/octet-stream');
      for (let sent = 0; sent < size; sent += chunk.length) {
        if (!res.write(chunk.subarray(0, Math.min(chunk.length, size - sent)))) await new Promise((r) => res.once('drain', r));
      }
      res.end();
      return;
    }
    if (url.pathname === '/stream') {
      res.setHeader('content-type', 'application/connect+json');
      res.write('first;');
      await new Promise<void>((resolve) => (this.releaseStream = resolve));
      res.end('rest');
      return;
    }
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers }));
  }
}

let stack: TestStack;
let team: SeededTeam;
let upstream: UpstreamStandIn;
let upstreamUrl: string;
let sandboxId: string;

function send(path: string, headers: Record<string, string>, init: { method?: string; body?: string | Buffer } = {}) {
  return fetch(stack.gateway.sandboxUrl + path, { ...init, headers } as RequestInit);
}

/** Routing headers, plus the sandbox's envd access token (derived as the scheduler derives it) so envd-port calls pass. */
const addressed = (id: string, port = 49983) => ({
  'e2b-sandbox-id': id,
  'e2b-sandbox-port': String(port),
  'x-access-token': stack.tokens.envdAccessToken(id),
});

beforeAll(async () => {
  upstream = new UpstreamStandIn();
  upstreamUrl = await upstream.listen();
  stack = await TestStack.start();
  team = await stack.seedTeam();
  sandboxId = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl });
});

afterAll(async () => {
  await stack?.stop();
  await upstream?.close();
});

/** A WebSocket upgrade through the gateway: the status it was answered with (101 when tunnelled). */
function upgradeStatus(headers: Record<string, string>): Promise<number> {
  const gatewayPort = Number(new URL(stack.gateway.sandboxUrl).port);
  return new Promise<number>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: gatewayPort, path: '/', headers: { ...headers, connection: 'Upgrade', upgrade: 'websocket' } });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

/** One request written as raw bytes (fetch would normalise what these tests send) and everything answered. */
function rawExchange(raw: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(Number(new URL(stack.gateway.sandboxUrl).port), '127.0.0.1', () => socket.write(raw));
    let text = '';
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.on('close', () => resolve(text));
    socket.on('error', reject);
  });
}

async function trafficCount(outcome: string): Promise<number> {
  const metric = stack.gateway.app.get(MetricsRegistry).registry.getSingleMetric('kiln_gateway_traffic_requests_total')!;
  return (await metric.get()).values.find((v) => v.labels.outcome === outcome)?.value ?? 0;
}

describe('sandbox traffic edge policy', () => {
  const route = (id: string, port = 49983) => ({ 'e2b-sandbox-id': id, 'e2b-sandbox-port': String(port) });

  it('refuses an envd call without the access token with 401 in envd\'s own error shape, and forwards nothing', async () => {
    const hits = upstream.hits;
    const forwarded = await trafficCount('forwarded');
    const refused = await trafficCount('refused_401');
    const response = await send('/process.Process/Start', { ...route(sandboxId), 'content-type': 'application/json' }, { method: 'POST', body: '{"process":{"cmd":"id"}}' });
    expect(response.status).toBe(401);
    expect(await response.json()).toEqual({ code: 401, message: expect.any(String) });
    expect(upstream.hits).toBe(hits);
    expect(await trafficCount('forwarded')).toBe(forwarded);
    expect(await trafficCount('refused_401')).toBe(refused + 1);
  });

  it('refuses a wrong token with 401 and forwards the right one, token header included (the guest checks it too)', async () => {
    const hits = upstream.hits;
    expect((await send('/envs', { ...route(sandboxId), 'x-access-token': 'not-the-token' })).status).toBe(401);
    expect(upstream.hits).toBe(hits);
    const response = await send('/envs', addressed(sandboxId));
    expect(response.status).toBe(200);
    const seen = (await response.json()) as { headers: Record<string, string> };
    expect(seen.headers['x-access-token']).toBe(stack.tokens.envdAccessToken(sandboxId));
    expect(upstream.hits).toBe(hits + 1);
  });

  it('lets GET /health through without a token', async () => {
    expect((await send('/health', route(sandboxId))).status).toBe(200);
  });

  it('refuses /init with 403 even with the right token', async () => {
    const hits = upstream.hits;
    const response = await send('/init', { ...addressed(sandboxId), 'content-type': 'application/json' }, { method: 'POST', body: '{"accessToken":"mine"}' });
    expect(response.status).toBe(403);
    expect(await response.json()).toEqual({ code: 403, message: expect.any(String) });
    expect(upstream.hits).toBe(hits);
  });

  it('forwards a signed /files URL without the token header, and refuses an expired or foreign one', async () => {
    const token = stack.tokens.envdAccessToken(sandboxId);
    const url = (signature: string, extra = '') => `/files?path=%2Fhome%2Fuser%2Fa.txt&username=user&signature=${encodeURIComponent(signature)}${extra}`;
    expect((await send(url(fileSignature('/home/user/a.txt', 'read', 'user', token)), route(sandboxId))).status).toBe(200);
    const future = Math.floor(Date.now() / 1000) + 60;
    expect((await send(url(fileSignature('/home/user/a.txt', 'read', 'user', token, future), `&signature_expiration=${future}`), route(sandboxId))).status).toBe(200);
    const hits = upstream.hits;
    const past = Math.floor(Date.now() / 1000) - 60;
    const expired = await send(url(fileSignature('/home/user/a.txt', 'read', 'user', token, past), `&signature_expiration=${past}`), route(sandboxId));
    expect(expired.status).toBe(401);
    // Exactly envd's body: the SDK's signing tests compare it whole.
    expect(await expired.json()).toEqual({ code: 401, message: 'signature is already expired' });
    expect((await send(url(fileSignature('/home/user/a.txt', 'write', 'user', token)), route(sandboxId))).status).toBe(401);
    expect((await send(url(fileSignature('/home/user/a.txt', 'read', 'user', 'other-token')), route(sandboxId))).status).toBe(401);
    expect(upstream.hits).toBe(hits);
  });

  it('guards user ports with the traffic access token when the sandbox is not public, and strips it before forwarding', async () => {
    const secured = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl, network: { allowPublicTraffic: false } });
    const trafficToken = stack.tokens.trafficAccessToken(secured);
    const hits = upstream.hits;
    const missing = await send('/', route(secured, 8080));
    expect(missing.status).toBe(403);
    expect(await missing.json()).toMatchObject({ code: 403, error_code: 'permission_denied', sandboxId: secured });
    expect((await send('/', { ...route(secured, 8080), 'e2b-traffic-access-token': 'wrong' })).status).toBe(403);
    // The envd token is not a traffic token.
    expect((await send('/', addressed(secured, 8080))).status).toBe(403);
    expect(upstream.hits).toBe(hits);

    const response = await send('/', { ...route(secured, 8080), 'e2b-traffic-access-token': trafficToken });
    expect(response.status).toBe(200);
    const seen = (await response.json()) as { headers: Record<string, string> };
    expect(seen.headers['e2b-traffic-access-token']).toBeUndefined();
    // envd has its own token; the traffic token is not asked for there (as in E2B).
    expect((await send('/envs', addressed(secured))).status).toBe(200);
  });

  it('sends the Host mask, with the port filled in, to user ports and not to envd', async () => {
    const masked = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl, network: { maskRequestHost: 'localhost:${PORT}' } });
    const user = (await (await send('/', route(masked, 3000))).json()) as { headers: Record<string, string> };
    expect(user.headers.host).toBe('localhost:3000');
    const envd = (await (await send('/envs', addressed(masked))).json()) as { headers: Record<string, string> };
    expect(envd.headers.host).toBe(new URL(stack.gateway.sandboxUrl).host);
  });

  it('refuses WebSocket upgrades without the envd token (401) or the traffic token (403) before anything is forwarded', async () => {
    const secured = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl, network: { allowPublicTraffic: false } });
    const hits = upstream.hits;
    expect(await upgradeStatus(route(sandboxId))).toBe(401);
    expect(await upgradeStatus(route(secured, 8888))).toBe(403);
    expect(upstream.hits).toBe(hits);
    expect(await upgradeStatus(addressed(sandboxId))).toBe(101);
    expect(await upgradeStatus({ ...route(secured, 8888), 'e2b-traffic-access-token': stack.tokens.trafficAccessToken(secured) })).toBe(101);
  });
});

describe('sandbox traffic routing', () => {
  it('forwards E2b-Sandbox-Id/-Port addressed requests to the host proxy, keeping path, query and headers', async () => {
    const response = await send('/some/path?x=1&y=two', { ...addressed(sandboxId, 8080), 'x-custom': 'kept', 'x-access-token': 'tok' });
    expect(response.status).toBe(200);
    const seen = (await response.json()) as { method: string; url: string; headers: Record<string, string> };
    expect(seen).toMatchObject({ method: 'GET', url: '/some/path?x=1&y=two' });
    expect(seen.headers).toMatchObject({ 'e2b-sandbox-id': sandboxId, 'e2b-sandbox-port': '8080', 'x-custom': 'kept', 'x-access-token': 'tok' });
  });

  it('routes a {port}-{sandboxId}.{domain} Host and adds the routing headers', async () => {
    // fetch may not set Host, so this one goes through node:http.
    const gatewayPort = Number(new URL(stack.gateway.sandboxUrl).port);
    const seen = await new Promise<{ headers: Record<string, string> }>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: gatewayPort, path: '/hello', headers: { host: `3000-${sandboxId}.kiln.test` } }, (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => resolve(JSON.parse(text)));
      });
      req.on('error', reject);
      req.end();
    });
    expect(seen.headers).toMatchObject({ 'e2b-sandbox-id': sandboxId, 'e2b-sandbox-port': '3000', host: `3000-${sandboxId}.kiln.test` });
  });

  it('streams a response body without waiting for its end (Connect server streaming)', async () => {
    const response = await send('/stream', addressed(sandboxId), { method: 'POST', body: '{}' });
    const reader = response.body!.getReader();
    const first = await reader.read();
    expect(Buffer.from(first.value!).toString()).toBe('first;');
    // Only now does the upstream send the rest: a buffering proxy would never have delivered the first part.
    upstream.releaseStream!();
    let rest = '';
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) rest += Buffer.from(chunk.value).toString();
    expect(rest).toBe('rest');
  });

  it('streams a 32 MiB upload and a 32 MiB download intact', async () => {
    const size = 32 * 1024 * 1024;
    const payload = Buffer.alloc(size);
    for (let i = 0; i < size; i += 4096) payload.writeUInt32LE(i, i);
    const upload = await send('/upload', { ...addressed(sandboxId), 'content-type': 'application/octet-stream' }, { method: 'POST', body: payload });
    expect(await upload.json()).toEqual({ bytes: size, sha256: createHash('sha256').update(payload).digest('hex') });

    const download = await send(`/download?size=${size}`, addressed(sandboxId));
    let received = 0;
    for await (const chunk of download.body as unknown as AsyncIterable<Uint8Array>) received += chunk.length;
    expect(received).toBe(size);
  });

  it('tunnels WebSocket upgrades both ways', async () => {
    const gatewayPort = Number(new URL(stack.gateway.sandboxUrl).port);
    const { response, socket } = await new Promise<{ response: IncomingMessage; socket: Socket }>((resolve, reject) => {
      const req = request({
        host: '127.0.0.1',
        port: gatewayPort,
        path: '/ws',
        headers: { ...addressed(sandboxId, 8888), connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' },
      });
      req.on('upgrade', (res, sock) => resolve({ response: res, socket: sock }));
      req.on('response', (res) => reject(new Error(`no upgrade: ${res.statusCode}`)));
      req.on('error', reject);
      req.end();
    });
    expect(response.statusCode).toBe(101);
    expect(response.headers).toMatchObject({ 'x-seen-sandbox': sandboxId, 'x-seen-port': '8888' });
    const echoed = new Promise<string>((resolve) => socket.once('data', (d: Buffer) => resolve(d.toString())));
    socket.write('ping through the tunnel');
    expect(await echoed).toBe('ping through the tunnel');
    socket.destroy();
  });

  it('caches routes: a burst of requests costs one scheduler lookup', async () => {
    const fresh = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl });
    const cache = stack.gateway.app.get(SandboxRouteCache);
    const before = cache.lookupsMade;
    const statuses = await Promise.all(Array.from({ length: 20 }, () => send('/', addressed(fresh)).then((r) => r.status)));
    expect(statuses).toEqual(Array(20).fill(200));
    expect(cache.lookupsMade - before).toBe(1);
  });

  it('drops a cached route when its host stops answering, and answers 502 in the error shape', async () => {
    const deadPort = await freePort();
    const stranded = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: `http://127.0.0.1:${deadPort}` });
    const cache = stack.gateway.app.get(SandboxRouteCache);
    const first = await send('/', addressed(stranded));
    expect(first.status).toBe(502);
    expect(await first.json()).toEqual({ code: 502, message: expect.stringContaining('unreachable'), error_code: 'unavailable', sandboxId: stranded });
    const before = cache.lookupsMade;
    await send('/', addressed(stranded));
    expect(cache.lookupsMade - before).toBe(1);
  });

  it('answers 502 with a JSON body for an unknown or killed sandbox (what the SDK reads as "not running")', async () => {
    const unknown = await send('/health', addressed('nosuchsandbox'));
    expect(unknown.status).toBe(502);
    expect(await unknown.json()).toEqual({ code: 502, message: 'The sandbox was not found', error_code: 'not_found', sandboxId: 'nosuchsandbox' });

    const doomed = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl });
    expect((await send('/', addressed(doomed))).status).toBe(200);
    const kill = await fetch(`${stack.gateway.apiUrl}/sandboxes/${doomed}`, { method: 'DELETE', headers: { 'x-api-key': team.apiKey } });
    expect(kill.status).toBe(204);
    expect((await send('/', addressed(doomed))).status).toBe(502);
  });

  it('refuses traffic for a paused sandbox with 502 (the SDK reads it as not running)', async () => {
    const paused = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl, state: SandboxState.Paused });
    const response = await send('/', addressed(paused));
    expect(response.status).toBe(502);
    // Why, in the body: paused, and traffic cannot resume it.
    expect(await response.json()).toEqual({ code: 502, message: 'The sandbox is paused', error_code: 'conflict', sandboxId: paused, canAutoResume: false });
  });

  it('resumes a paused sandbox with autoResume for its traffic (one resume for many requests), then serves them', async () => {
    const agent = new FakeHostAgent('traffic-fake-host');
    await agent.start();
    try {
      const paused = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl, state: SandboxState.Paused, autoResume: true, hostAddress: agent.address });
      agent.paused.add(paused);
      agent.resumeDelayMs = 300;
      const responses = await Promise.all(Array.from({ length: 5 }, () => send('/after-resume', addressed(paused, 8080))));
      expect(responses.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
      for (const response of responses) expect(await response.json()).toMatchObject({ url: '/after-resume', headers: { 'e2b-sandbox-id': paused } });
      expect(agent.resumeRequests.map((r) => r.sandboxId)).toEqual([paused]);
      expect((await stack.sandboxes.find(paused))?.state).toBe(SandboxState.Running);

      // A resume the host fails is refused at once (never a hang), and the sandbox stays paused.
      const failing = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl, state: SandboxState.Paused, autoResume: true, hostAddress: agent.address });
      agent.paused.add(failing);
      agent.resumeDelayMs = 0;
      agent.resumeOutcome = { fail: 9, details: 'artifact state.bin: sha256 mismatch' };
      const refused = await send('/', addressed(failing, 8080));
      expect(refused.status).toBe(400);
      expect(await refused.json()).toMatchObject({ error_code: 'failed_precondition', message: expect.stringContaining('sha256 mismatch'), sandboxId: failing });
      expect((await stack.sandboxes.find(failing))?.state).toBe(SandboxState.Paused);
    } finally {
      await agent.stop();
    }
  });

  it('answers 400 when the request names no sandbox or a malformed one', async () => {
    for (const headers of [{}, { 'e2b-sandbox-id': 'BAD-ID' }, { 'e2b-sandbox-id': sandboxId, 'e2b-sandbox-port': '99999' }, { host: 'x-abc.kiln.test' }]) {
      const response = await send('/', headers as Record<string, string>);
      expect(response.status).toBe(400);
      expect(await response.json()).toMatchObject({ code: 400, message: expect.any(String), error_code: 'invalid_argument' });
    }
  });

  it('answers 400 for a request-target http-proxy cannot forward as a path (/\\, found by tools/fuzz: was a 500)', async () => {
    const hitsBefore = upstream.hits;
    const headers = Object.entries(addressed(sandboxId)).map(([k, v]) => `${k}: ${v}\r\n`).join('');
    const answer = await rawExchange(`GET /\\ HTTP/1.1\r\nHost: x\r\n${headers}Connection: close\r\n\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4))).toMatchObject({ code: 400, error_code: 'invalid_argument' });
    expect(upstream.hits).toBe(hitsBefore);
    // Control: the same request with a plain path is forwarded.
    expect((await send('/plain', addressed(sandboxId))).status).toBeLessThan(500);
  });

  it('answers CONNECT with 405 {code, message} instead of dropping the connection unanswered', async () => {
    const answer = await rawExchange('CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 405 /);
    expect(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4))).toMatchObject({ code: 405, message: expect.any(String) });
  });

  it('refuses a WebSocket upgrade for an unknown sandbox with a 502 response, not a hang', async () => {
    const gatewayPort = Number(new URL(stack.gateway.sandboxUrl).port);
    const status = await new Promise<number>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: gatewayPort, path: '/', headers: { ...addressed('ghost'), connection: 'Upgrade', upgrade: 'websocket' } });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('upgrade', () => reject(new Error('unexpected upgrade')));
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(502);
  });

  it('lets an in-flight stream finish on shutdown while refusing new connections', async () => {
    const second = await stack.startGateway();
    const response = await fetch(`${second.sandboxUrl}/stream`, { method: 'POST', body: '{}', headers: addressed(sandboxId) });
    const reader = response.body!.getReader();
    expect(Buffer.from((await reader.read()).value!).toString()).toBe('first;');
    let closed = false;
    const closing = second.close().then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 300));
    await expect(fetch(`${second.sandboxUrl}/`, { headers: addressed(sandboxId) })).rejects.toThrow();
    expect(closed).toBe(false);
    upstream.releaseStream!();
    let rest = '';
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) rest += Buffer.from(chunk.value).toString();
    expect(rest).toBe('rest');
    await closing;
  });

  it('answers 503 in the error shape when the scheduler is down (route not cached)', async () => {
    const uncached = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl });
    await stack.stopScheduler();
    const response = await send('/', addressed(uncached));
    expect(response.status).toBe(503);
    expect(await response.json()).toMatchObject({ code: 503, message: expect.any(String), sandboxId: uncached });
  });
});
