import 'reflect-metadata';
import { createHash } from 'node:crypto';
import { IncomingMessage, Server, createServer, request } from 'node:http';
import type { Socket } from 'node:net';
import { SandboxState } from '@kiln/contracts';
import { SandboxRouteCache } from '../src/traffic/sandbox-route.cache';
import { freePort } from '@kiln/testing';
import { SeededTeam, TestStack } from './support/test-stack';

jest.setTimeout(60_000);


/**
 * Stands in for a host agent's traffic proxy (the real one needs VMs): it records
 * what it received and offers streaming, upload, download and WebSocket endpoints.
 */
class UpstreamStandIn {
  readonly server: Server;
  /** Resolves the gate the /stream endpoint waits on before sending the rest of its body. */
  releaseStream?: () => void;
  private readonly sockets = new Set<Socket>();

  constructor() {
    this.server = createServer((req, res) => void this.handle(req, res));
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    this.server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
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

const addressed = (id: string, port = 49983) => ({ 'e2b-sandbox-id': id, 'e2b-sandbox-port': String(port) });

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
    expect(await unknown.json()).toEqual({ code: 502, message: 'sandbox nosuchsandbox was not found', error_code: 'not_found', sandboxId: 'nosuchsandbox' });

    const doomed = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl });
    expect((await send('/', addressed(doomed))).status).toBe(200);
    const kill = await fetch(`${stack.gateway.apiUrl}/sandboxes/${doomed}`, { method: 'DELETE', headers: { 'x-api-key': team.apiKey } });
    expect(kill.status).toBe(204);
    expect((await send('/', addressed(doomed))).status).toBe(502);
  });

  it('refuses traffic for a paused sandbox with 409', async () => {
    const paused = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl, state: SandboxState.Paused });
    const response = await send('/', addressed(paused));
    expect(response.status).toBe(409);
    expect(await response.json()).toMatchObject({ code: 409, error_code: 'conflict', sandboxId: paused });
  });

  it('answers 400 when the request names no sandbox or a malformed one', async () => {
    for (const headers of [{}, { 'e2b-sandbox-id': 'BAD-ID' }, { 'e2b-sandbox-id': sandboxId, 'e2b-sandbox-port': '99999' }, { host: 'x-abc.kiln.test' }]) {
      const response = await send('/', headers as Record<string, string>);
      expect(response.status).toBe(400);
      expect(await response.json()).toMatchObject({ code: 400, message: expect.any(String), error_code: 'invalid_argument' });
    }
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
