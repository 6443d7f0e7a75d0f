import { IncomingMessage, Server, ServerResponse, createServer, request } from 'node:http';
import type { Socket } from 'node:net';
import { SandboxConnections } from './sandbox-connections';

/**
 * A real HTTP server whose handler hands each response (and each upgraded socket) to the test, so the registry
 * works on live connections: what the client sees is what a proxied client would see.
 */
let server: Server;
let port: number;
const arrivals: Array<(r: { req: IncomingMessage; res: ServerResponse }) => void> = [];
const upgrades: Array<(socket: Socket) => void> = [];

function nextResponse(): Promise<{ req: IncomingMessage; res: ServerResponse }> {
  return new Promise((resolve) => arrivals.push(resolve));
}

/** Sends a GET and resolves with what the client saw: the status and body, or how the body ended early. */
function get(path: string): Promise<{ status?: number; body: string; ended: 'complete' | 'aborted' | 'failed'; error?: string }> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode, body, ended: 'complete' }));
      res.on('aborted', () => resolve({ status: res.statusCode, body, ended: 'aborted' }));
      res.on('error', () => undefined);
    });
    req.on('error', (error) => resolve({ body: '', ended: 'failed', error: error.message }));
    req.end();
  });
}

function openTunnel(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/ws', agent: false, headers: { connection: 'Upgrade', upgrade: 'websocket' } });
    req.on('upgrade', (_res, socket) => resolve(socket));
    req.on('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  server = createServer((req, res) => arrivals.shift()?.({ req, res }));
  server.on('upgrade', (_req, socket: Socket) => {
    socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    upgrades.shift()?.(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as { port: number }).port;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

describe('SandboxConnections', () => {
  it('answers a request whose response has not started with the 502 refusal, naming the destroyed sandbox', async () => {
    const connections = new SandboxConnections();
    const arrived = nextResponse();
    const seen = get('/pending');
    const { res } = await arrived;
    connections.trackRequest('sbx-a', res);

    expect(connections.endAll('sbx-a', 'sandbox sbx-a was destroyed while the request was in flight')).toEqual(['refused']);
    const outcome = await seen;
    expect(outcome).toMatchObject({ status: 502, ended: 'complete' });
    expect(JSON.parse(outcome.body)).toEqual({ code: 502, message: 'sandbox sbx-a was destroyed while the request was in flight' });
  });

  it('cuts a response that is mid-body: the client sees it end early, not a clean end', async () => {
    const connections = new SandboxConnections();
    const arrived = nextResponse();
    const seen = get('/stream');
    const { res } = await arrived;
    res.writeHead(200, { 'content-type': 'application/connect+json' });
    res.write('first-message;');
    connections.trackRequest('sbx-b', res);
    // Let the first chunk reach the client before the cut.
    await new Promise((r) => setTimeout(r, 50));

    expect(connections.endAll('sbx-b', 'gone')).toEqual(['cut']);
    const outcome = await seen;
    expect(outcome).toEqual({ status: 200, body: 'first-message;', ended: 'aborted' });
  });

  it('closes a tunnel of the sandbox', async () => {
    const connections = new SandboxConnections();
    const serverSide = new Promise<Socket>((resolve) => upgrades.push(resolve));
    const client = await openTunnel();
    connections.trackTunnel('sbx-c', await serverSide);
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    client.resume();

    expect(connections.endAll('sbx-c', 'gone')).toEqual(['tunnel']);
    await closed;
  });

  it('ends only the destroyed sandbox’s connections, and each only once', async () => {
    const connections = new SandboxConnections();
    const first = nextResponse();
    const doomed = get('/doomed');
    connections.trackRequest('sbx-d', (await first).res);
    const second = nextResponse();
    const survivor = get('/survivor');
    const survivorRes = (await second).res;
    connections.trackRequest('sbx-e', survivorRes);

    expect(connections.endAll('sbx-d', 'gone')).toEqual(['refused']);
    expect(connections.endAll('sbx-d', 'gone')).toEqual([]);
    expect((await doomed).status).toBe(502);
    expect(connections.count('sbx-e')).toBe(1);
    survivorRes.end('still here');
    expect(await survivor).toMatchObject({ status: 200, body: 'still here', ended: 'complete' });
  });

  it('forgets a connection once it closes, and does not count one that had already finished', async () => {
    const connections = new SandboxConnections();
    const arrived = nextResponse();
    const seen = get('/short');
    const { res } = await arrived;
    connections.trackRequest('sbx-f', res);
    expect(connections.count()).toBe(1);
    res.end('done');
    await seen;
    await new Promise((r) => setImmediate(r));
    expect(connections.count('sbx-f')).toBe(0);
    expect(connections.count()).toBe(0);
    expect(connections.endAll('sbx-f', 'gone')).toEqual([]);

    // Finished but not yet closed (the close event is still to come): nothing left to end.
    const another = nextResponse();
    const seenAnother = get('/finished');
    const finished = (await another).res;
    connections.trackRequest('sbx-g', finished);
    finished.end('ok');
    expect(connections.endAll('sbx-g', 'gone')).toEqual([]);
    expect(await seenAnother).toMatchObject({ status: 200, body: 'ok' });
  });
});
