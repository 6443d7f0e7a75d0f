import 'reflect-metadata';
import { Agent, IncomingMessage, Server, ServerResponse, createServer, request } from 'node:http';
import { connect, createServer as createTcpServer, type Socket } from 'node:net';
import type { HostAgentEnv } from '@kiln/config';
import { fileSignature } from '@kiln/contracts/envd-auth';
import { MetricsRegistry } from '@kiln/telemetry';
import type { SandboxManager } from '../sandbox/sandbox-manager.service';
import { SandboxTrafficProxy } from './sandbox-traffic-proxy';

/** A loopback address of its own, so the stand-in guest can take envd's fixed port without clashing. */
const GUEST_ADDRESS = '127.77.0.1';
const ENVD = 49983;
const TOKEN = 'host-proxy-test-token';

/** An upload envd refuses on its headers (bad username) and the answer it gives. */
const EARLY_REFUSAL = '/files?path=/tmp/upload&username=nobody';
const EARLY_REFUSAL_BODY = JSON.stringify({ code: 400, message: 'error looking up user nobody: unknown user nobody' });
const DIES_ON_HEADERS = '/files?path=/tmp/upload&username=crash';

/** One Connect streaming envelope (flags 0: a message) with a JSON payload. */
function connectEnvelope(message: unknown): Buffer {
  const payload = Buffer.from(JSON.stringify(message));
  const header = Buffer.alloc(5);
  header.writeUInt32BE(payload.length, 1);
  return Buffer.concat([header, payload]);
}

/** Stands in for a guest behind a network slot: records every request that reaches it. */
class GuestStandIn {
  readonly seen: Array<{ method?: string; url?: string; headers: IncomingMessage['headers']; body: string }> = [];
  upgrades = 0;
  /** Start streams the guest is holding open. */
  readonly openStreams: ServerResponse[] = [];
  private readonly servers: Server[] = [];

  async listen(port: number): Promise<number> {
    const server = createServer(async (req, res) => {
      if (req.url?.startsWith(EARLY_REFUSAL)) {
        // envd refusing an upload on its headers alone (a user that does not exist): it answers, then closes without
        // reading the body, so the proxy's next write of that body fails (EPIPE, or ECONNRESET).
        res.writeHead(400, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(EARLY_REFUSAL_BODY) });
        res.end(EARLY_REFUSAL_BODY, () => req.socket.destroy());
        return;
      }
      if (req.url?.startsWith(DIES_ON_HEADERS)) {
        // A guest agent that crashes on the request: the connection dies with no answer at all.
        req.socket.destroy();
        return;
      }
      let body = '';
      for await (const chunk of req) body += String(chunk);
      this.seen.push({ method: req.method, url: req.url, headers: req.headers, body });
      if (req.url === '/process.Process/Start') {
        // envd's Start stream: the start event, then nothing until the process ends (here: until the test says).
        res.writeHead(200, { 'content-type': 'application/connect+json' });
        res.write(connectEnvelope({ event: { start: { pid: 42 } } }));
        this.openStreams.push(res);
        return;
      }
      if (req.url === '/hang') return; // answers nothing, like a guest busy on a long unary call
      if (req.url === '/cut') {
        // The guest's side of the connection dies mid-body (its agent crashed): the socket closes, the body is unfinished.
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.write('partial');
        setTimeout(() => res.socket?.destroy(), 20);
        return;
      }
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ reached: true }));
    });
    server.on('upgrade', (req, socket) => {
      this.upgrades++;
      const accept = 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n';
      if (req.url === '/held') {
        socket.write(accept);
        socket.pipe(socket);
        return;
      }
      socket.end(accept);
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
/** Each sandbox's keep-alive pool to its guest, as the manager keeps one per sandbox. */
const guestPools = new Map<string, Agent>();
const endingListeners = new Set<(sandboxId: string) => void>();

function liveSandbox(id: string) {
  const record = records.get(id);
  if (!record) return undefined;
  let guestConnections = guestPools.get(id);
  if (!guestConnections) guestPools.set(id, (guestConnections = new Agent({ keepAlive: true })));
  return { record, state: 'running', slot: { hostAddress: GUEST_ADDRESS }, guestConnections };
}

/**
 * What SandboxManager does as a teardown begins: the sandbox stops being routable and the ending listeners are told.
 * The guest's side stays silent, as a dead VM's does (it resets none of its connections): whatever ends the client's
 * connections is the proxy's doing.
 */
function destroySandbox(id: string): void {
  records.delete(id);
  for (const listener of endingListeners) listener(id);
}

async function counted(outcome: string): Promise<number> {
  const metric = metrics.registry.getSingleMetric('kiln_agent_proxy_requests_total')!;
  return (await metric.get()).values.find((v) => v.labels.outcome === outcome)?.value ?? 0;
}

async function endedByDestroy(how: string): Promise<number> {
  const metric = metrics.registry.getSingleMetric('kiln_agent_proxy_ended_by_destroy_total')!;
  return (await metric.get()).values.find((v) => v.labels.how === how)?.value ?? 0;
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
  const sandboxes = {
    get: (id: string) => liveSandbox(id),
    onSandboxEnding: (listener: (sandboxId: string) => void) => {
      endingListeners.add(listener);
      return () => endingListeners.delete(listener);
    },
  } as unknown as SandboxManager;
  proxy = new SandboxTrafficProxy({ PROXY_PORT: 0 } as HostAgentEnv, sandboxes, metrics);
  await proxy.onApplicationBootstrap();
});

afterAll(async () => {
  await proxy?.onApplicationShutdown();
  await guest?.close();
  for (const agent of guestPools.values()) agent.destroy();
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

  it('refuses a request-target http-proxy cannot parse (/\\) with 400 instead of throwing in the handler', async () => {
    // Raw: fetch would rewrite the backslash. http-proxy reads `/\` as a host-less network path and throws.
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(proxy.port, '127.0.0.1', () =>
        socket.write(`GET /\\ HTTP/1.1\r\nHost: x\r\ne2b-sandbox-id: secured\r\nx-access-token: ${TOKEN}\r\nConnection: close\r\n\r\n`),
      );
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
    });
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(guest.seen).toEqual([]);
    // Control: the proxy still forwards.
    expect((await send('/health', envd('secured', { 'x-access-token': TOKEN }))).status).toBe(200);
  });
});

describe('host agent proxy: a destroyed sandbox’s open connections', () => {
  /** A Start stream through the proxy with fetch (undici, what the e2b SDK's transport uses): resolves once its start event arrived. */
  async function openStartStream(id: string) {
    const response = await send('/process.Process/Start', envd(id, { 'x-access-token': TOKEN, 'content-type': 'application/connect+json' }), {
      method: 'POST',
      body: '{"process":{"cmd":"sleep","args":["60"]}}',
    });
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    const first = await reader.read();
    expect(Buffer.from(first.value!).subarray(5).toString()).toBe('{"event":{"start":{"pid":42}}}');
    /** How the rest of the body ended: 'end' for a clean end, else the transport's error message. */
    const rest = (async () => {
      try {
        while (!(await reader.read()).done);
        return 'end';
      } catch (error) {
        return (error as Error).message;
      }
    })();
    // Wrapped: an async function returning the bare promise would wait for the whole stream.
    return { rest };
  }

  function withSandbox(id: string): void {
    records.set(id, { envdAccessToken: TOKEN });
  }

  it('cuts a mid-stream Connect response at once: the client sees the connection terminated, as the SDK expects', async () => {
    withSandbox('doomed-stream');
    const cutBefore = await endedByDestroy('cut');
    const { rest } = await openStartStream('doomed-stream');
    expect(proxy.connections.count('doomed-stream')).toBe(1);

    const destroyedAt = Date.now();
    destroySandbox('doomed-stream');
    // undici's words for a body that ended before its end: the SDK probes /health on it and, given the 502 below,
    // raises "The sandbox was killed or reached its end of life while the request was in flight".
    expect(await rest).toBe('terminated');
    expect(Date.now() - destroyedAt).toBeLessThan(1_000);
    expect(await endedByDestroy('cut')).toBe(cutBefore + 1);
    expect(proxy.connections.count('doomed-stream')).toBe(0);

    const health = await send('/health', envd('doomed-stream'));
    expect(health.status).toBe(502);
    expect(await health.json()).toEqual({ code: 502, message: 'sandbox doomed-stream is not running on this host' });
  });

  it('leaves other sandboxes’ streams open, and they end normally', async () => {
    withSandbox('doomed-neighbour');
    withSandbox('survivor');
    guest.openStreams.length = 0;
    const { rest: doomed } = await openStartStream('doomed-neighbour');
    const { rest: survivor } = await openStartStream('survivor');
    const [doomedAtGuest, survivorAtGuest] = guest.openStreams;

    destroySandbox('doomed-neighbour');
    expect(await doomed).toBe('terminated');
    expect(doomedAtGuest.destroyed).toBe(true);
    expect(proxy.connections.count('survivor')).toBe(1);
    // Still open: the guest can go on writing to it and end it properly.
    survivorAtGuest.end(Buffer.concat([connectEnvelope({ event: { end: { exitCode: 0, exited: true, status: 'exit status 0' } } }), endStreamEnvelope()]));
    expect(await survivor).toBe('end');
    destroySandbox('survivor');
  });

  it('answers a request still waiting for the guest with the 502 refusal', async () => {
    withSandbox('doomed-unary');
    const refusedBefore = await endedByDestroy('refused');
    const pending = send('/hang', envd('doomed-unary', { 'x-access-token': TOKEN }));
    await eventuallyTrue(() => proxy.connections.count('doomed-unary') === 1);

    destroySandbox('doomed-unary');
    const response = await pending;
    expect(response.status).toBe(502);
    expect(await response.json()).toEqual({ code: 502, message: 'sandbox doomed-unary was destroyed while the request was in flight' });
    expect(await endedByDestroy('refused')).toBe(refusedBefore + 1);
  });

  it('closes a WebSocket tunnel of the sandbox', async () => {
    withSandbox('doomed-ws');
    const tunnelBefore = await endedByDestroy('tunnel');
    const socket = await new Promise<Socket>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: proxy.port, path: '/held', headers: { ...envd('doomed-ws', { 'x-access-token': TOKEN }), connection: 'Upgrade', upgrade: 'websocket' } });
      req.on('upgrade', (_res, upgraded) => resolve(upgraded));
      req.on('response', () => reject(new Error('not upgraded')));
      req.on('error', reject);
      req.end();
    });
    // The tunnel works until the sandbox goes.
    const echoed = new Promise<string>((resolve) => socket.once('data', (data) => resolve(String(data))));
    socket.write('ping');
    expect(await echoed).toBe('ping');
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));

    destroySandbox('doomed-ws');
    await closed;
    expect(await endedByDestroy('tunnel')).toBe(tunnelBefore + 1);
  });

  it('cuts the client’s response when the guest’s body ends early, rather than leaving it open', async () => {
    withSandbox('flaky-guest');
    const before = await counted('upstream_cut');
    const response = await send('/cut', envd('flaky-guest', { 'x-access-token': TOKEN }));
    expect(response.status).toBe(200);
    await expect(response.text()).rejects.toThrow('terminated');
    expect(await counted('upstream_cut')).toBe(before + 1);
    destroySandbox('flaky-guest');
  });
});

/** Connect's end-of-stream envelope (flags 2) with no error: a stream that ended well. */
function endStreamEnvelope(): Buffer {
  const payload = Buffer.from('{}');
  const header = Buffer.alloc(5);
  header[0] = 2;
  header.writeUInt32BE(payload.length, 1);
  return Buffer.concat([header, payload]);
}

async function eventuallyTrue(check: () => boolean, timeoutMs = 2_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** What an upload client saw: the answer, if any, how its request failed, if it did, and how much of the body it wrote. */
interface UploadOutcome {
  status?: number;
  /** The answer's Connection header. */
  connection?: string;
  body: string;
  error?: string;
  bodyBytesWritten: number;
  /** When the client's connection closed, from the first byte of the answer (ms), or undefined when it stayed open. */
  closedAfterAnswerMs?: number;
}

/**
 * POSTs `bodyBytes` through the proxy as an upload client (the gateway's proxy, the SDK) does: node:http on a keep-alive
 * pool, writing the body in chunks as fast as the connection takes them, and going on writing after an answer arrives
 * (HTTP/1.1 clients do not stop on an early response). Settles once the answer has ended and the connection closed,
 * or after `settleMs`.
 */
function upload(path: string, headers: Record<string, string>, bodyBytes: number, settleMs = 10_000): Promise<UploadOutcome> {
  const pool = new Agent({ keepAlive: true });
  const chunk = Buffer.alloc(64 * 1024, 'u');
  return new Promise<UploadOutcome>((resolve) => {
    const outcome: UploadOutcome = { body: '', bodyBytesWritten: 0 };
    let answeredAt: number | undefined;
    let answerEnded = false;
    let connectionClosed = false;
    const settle = () => {
      clearTimeout(giveUp);
      pool.destroy();
      resolve(outcome);
    };
    const giveUp = setTimeout(() => {
      outcome.error ??= `not settled after ${settleMs} ms`;
      req.destroy();
      settle();
    }, settleMs);
    const settleIfDone = () => {
      if ((answerEnded || outcome.status === undefined) && connectionClosed) settle();
    };
    const req = request({
      host: '127.0.0.1',
      port: proxy.port,
      path,
      method: 'POST',
      agent: pool,
      headers: { ...headers, 'content-type': 'application/octet-stream', 'content-length': String(bodyBytes) },
    });
    req.on('response', (res) => {
      answeredAt = Date.now();
      outcome.status = res.statusCode;
      outcome.connection = res.headers.connection;
      res.setEncoding('utf8');
      res.on('data', (text: string) => (outcome.body += text));
      res.on('error', (error) => (outcome.error ??= `answer: ${error.message}`));
      res.on('close', () => {
        answerEnded = res.complete;
        settleIfDone();
      });
    });
    req.on('error', (error) => (outcome.error ??= `request: ${error.message}`));
    req.on('close', () => {
      connectionClosed = true;
      if (answeredAt !== undefined) outcome.closedAfterAnswerMs = Date.now() - answeredAt;
      settleIfDone();
    });
    const writeMore = (): void => {
      while (outcome.bodyBytesWritten < bodyBytes) {
        if (req.destroyed) return;
        const piece = chunk.subarray(0, Math.min(chunk.length, bodyBytes - outcome.bodyBytesWritten));
        outcome.bodyBytesWritten += piece.length;
        if (!req.write(piece)) {
          req.once('drain', writeMore);
          return;
        }
      }
      req.end();
    };
    writeMore();
  });
}

describe('host agent proxy: a guest that answers before it has read the body', () => {
  const BIG_BODY = 16 * 1024 * 1024;

  /**
   * Runs an upload and collects the proxy's own side of the client connections it opened (the server is private: read
   * here only to see that each of them ends, lingering close included, rather than trusting the client's view).
   */
  async function uploadWatchingProxySide(...args: Parameters<typeof upload>) {
    const server = (proxy as unknown as { server: Server }).server;
    const proxySide: Socket[] = [];
    const collect = (socket: Socket) => proxySide.push(socket);
    server.on('connection', collect);
    try {
      return { outcome: await upload(...args), proxySide };
    } finally {
      server.off('connection', collect);
    }
  }

  /**
   * A guest port served from a bare socket, to control what the guest reads: it reads a request's headers, answers
   * 400 (with `connection: close`, as Go's server does when it will not read a body, or without), reads nothing more,
   * and closes `closeAfterMs` later: at once, or after the answer has surely been read.
   */
  async function listenEarlyRefuser(closeAfterMs: number, connectionClose: boolean) {
    const sockets = new Set<Socket>();
    const server = createTcpServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
      let head = '';
      const onData = (chunk: Buffer) => {
        head += chunk.toString('latin1');
        if (!head.includes('\r\n\r\n')) return;
        socket.off('data', onData);
        socket.pause();
        const answer =
          `HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(EARLY_REFUSAL_BODY)}\r\n` +
          `${connectionClose ? 'connection: close\r\n' : ''}\r\n${EARLY_REFUSAL_BODY}`;
        socket.write(answer, () => (closeAfterMs ? setTimeout(() => socket.destroy(), closeAfterMs) : socket.destroy()));
      };
      socket.on('data', onData);
    });
    await new Promise<void>((resolve) => server.listen(0, GUEST_ADDRESS, resolve));
    return {
      port: (server.address() as { port: number }).port,
      close: async () => {
        for (const socket of sockets) socket.destroy();
        await new Promise((resolve) => server.close(resolve));
      },
    };
  }

  it.each([
    ['envd (node:http) closes at once: the answer is still unread when the write fails', 'envd', 0, false],
    ['a bare-socket guest answers `connection: close` and closes at once', 'bare', 0, true],
    ['a bare-socket guest answers keep-alive and closes 50 ms later: the answer is read before the reset reaches the proxy', 'bare', 50, false],
    ['a bare-socket guest answers `connection: close` and closes 50 ms later: the proxy ends the guest connection itself', 'bare', 50, true],
  ])('relays the guest’s early 400 and its body, not a 502, and closes the client’s connection: %s', async (_case, guestKind, closeAfterMs, connectionClose) => {
    records.set('early-answer', { envdAccessToken: TOKEN });
    const refuser = guestKind === 'bare' ? await listenEarlyRefuser(closeAfterMs as number, connectionClose as boolean) : undefined;
    const errorsBefore = await counted('upstream_error');
    const earlyBefore = await counted('answered_early');
    const headers = refuser ? { 'e2b-sandbox-id': 'early-answer', 'e2b-sandbox-port': String(refuser.port) } : envd('early-answer', { 'x-access-token': TOKEN });
    const { outcome, proxySide } = await uploadWatchingProxySide(EARLY_REFUSAL, headers, BIG_BODY).finally(() => refuser?.close());
    expect(outcome).toMatchObject({ status: 400, body: EARLY_REFUSAL_BODY });
    expect(outcome.error).toBeUndefined();
    // Counted as a guest that answered early, not as one that was unreachable.
    expect(await counted('answered_early')).toBe(earlyBefore + 1);
    expect(await counted('upstream_error')).toBe(errorsBefore);
    // Neither read to its end nor left hanging: the client is told the connection is over soon after the answer.
    expect(outcome.bodyBytesWritten).toBeLessThan(BIG_BODY);
    expect(outcome.closedAfterAnswerMs).toBeDefined();
    expect(outcome.closedAfterAnswerMs!).toBeLessThan(3_000);
    await eventuallyTrue(() => proxy.connections.count('early-answer') === 0);
    expect(proxySide).toHaveLength(1);
    await eventuallyTrue(() => proxySide.every((socket) => socket.destroyed), 3_000);
    destroySandbox('early-answer');
  });

  it('still answers 502 when the guest’s connection dies without an answer', async () => {
    records.set('dies-on-headers', { envdAccessToken: TOKEN });
    const errorsBefore = await counted('upstream_error');
    const { outcome, proxySide } = await uploadWatchingProxySide(DIES_ON_HEADERS, envd('dies-on-headers', { 'x-access-token': TOKEN }), BIG_BODY);
    expect(outcome.status).toBe(502);
    expect(JSON.parse(outcome.body)).toEqual({ code: 502, message: expect.stringMatching(/^sandbox unreachable: /) });
    expect(outcome.connection).toBe('close');
    expect(outcome.bodyBytesWritten).toBeLessThan(BIG_BODY);
    expect(outcome.closedAfterAnswerMs).toBeDefined();
    expect(outcome.closedAfterAnswerMs!).toBeLessThan(3_000);
    expect(await counted('upstream_error')).toBe(errorsBefore + 1);
    await eventuallyTrue(() => proxy.connections.count('dies-on-headers') === 0);
    expect(proxySide).toHaveLength(1);
    await eventuallyTrue(() => proxySide.every((socket) => socket.destroyed), 3_000);
    destroySandbox('dies-on-headers');
  });
});
