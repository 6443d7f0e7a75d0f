import 'reflect-metadata';
import { copyFileSync, writeFileSync } from 'node:fs';
import { IncomingMessage, Server, ServerResponse, createServer } from 'node:http';
import { Agent, request as httpsRequest } from 'node:https';
import type { LookupFunction, Socket } from 'node:net';
import { TLSSocket, connect as tlsConnect } from 'node:tls';
import { ConfigError } from '@kiln/config';
import { MetricsRegistry } from '@kiln/telemetry';
import { freePort } from '@kiln/testing';
import { RunningGateway, startGateway } from '../src/gateway';
import { TlsEdgeListener } from '../src/tls-edge/tls-edge.listener';
import { TestCertificates, makeTestCertificates } from './support/test-certificates';
import { SeededTeam, TestStack } from './support/test-stack';

jest.setTimeout(60_000);

const DOMAIN = 'kiln.test';
const API_HOST = `api.${DOMAIN}`;

/** Every name resolves to loopback, so the suite does not depend on this machine's resolver (NSS). */
const loopbackLookup = ((_hostname: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) => {
  if (options?.all) callback(null, [{ address: '127.0.0.1', family: 4 }]);
  else callback(null, '127.0.0.1', 4);
}) as unknown as LookupFunction;

/** Stands in for a host agent's traffic proxy: echoes what reached it, streams on /stream, echoes upgraded bytes. */
class UpstreamStandIn {
  readonly server: Server;
  releaseStream?: () => void;
  private readonly sockets = new Set<Socket>();

  constructor() {
    this.server = createServer((req, res) => void this.handle(req, res));
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    this.server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Seen-Sandbox: ${req.headers['e2b-sandbox-id']}\r\n\r\n`);
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

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.url === '/stream') {
      res.setHeader('content-type', 'application/connect+json');
      res.write('first;');
      await new Promise<void>((resolve) => (this.releaseStream = resolve));
      res.end('rest');
      return;
    }
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ url: req.url, headers: req.headers }));
  }
}

interface Answer {
  status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
  reusedSocket: boolean;
}

interface TlsCall {
  /** The name connected to: the TLS server name (SNI) and, unless `headers.host` says otherwise, the Host. */
  name: string;
  path?: string;
  method?: string;
  headers?: Record<string, string>;
  /** The CA the client trusts; null trusts only the default store (which does not hold the test CA). */
  ca?: Buffer | null;
  agent?: Agent;
}

let certs: TestCertificates;
let upstream: UpstreamStandIn;
let stack: TestStack;
let gateway: RunningGateway;
let team: SeededTeam;
let sandboxId: string;

function call(options: TlsCall): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: options.name,
        servername: options.name,
        port: gateway.tlsPort,
        path: options.path ?? '/',
        method: options.method ?? 'GET',
        headers: options.headers,
        lookup: loopbackLookup,
        ca: options.ca === null ? undefined : (options.ca ?? certs.ca),
        agent: options.agent ?? false,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            // not JSON: keep the text for the assertion message
          }
          resolve({ status: res.statusCode ?? 0, body, reusedSocket: req.reusedSocket });
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const sandboxHost = (id: string, port = 49983) => `${port}-${id}.${DOMAIN}`;

async function handshakeFailures(reason: string): Promise<number> {
  const metric = gateway.app.get(MetricsRegistry).registry.getSingleMetric('kiln_gateway_tls_handshake_failures_total');
  return (await metric?.get())?.values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

beforeAll(async () => {
  certs = makeTestCertificates(DOMAIN);
  upstream = new UpstreamStandIn();
  const upstreamUrl = await upstream.listen();
  stack = await TestStack.start({ gateway: false });
  gateway = await stack.startGateway({
    KILN_DOMAIN: DOMAIN,
    TLS_PORT: String(await freePort()),
    TLS_CERT_FILE: certs.certFile,
    TLS_KEY_FILE: certs.keyFile,
  });
  stack.gateway = gateway;
  team = await stack.seedTeam();
  sandboxId = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: upstreamUrl });
});

afterAll(async () => {
  await stack?.stop();
  await upstream?.close();
  certs?.remove();
});

describe('TLS listener', () => {
  it('serves the REST API at api.{domain}, answering with the configured domain as the sandbox domain', async () => {
    const health = await call({ name: API_HOST, path: '/health' });
    expect(health).toMatchObject({ status: 200, body: { status: 'ok' } });
    expect((await call({ name: API_HOST, path: '/sandboxes' })).status).toBe(401);
    const list = await call({ name: API_HOST, path: '/sandboxes', headers: { 'x-api-key': team.apiKey } });
    expect(list.status).toBe(200);
    expect(list.body.map((s: { sandboxID: string }) => s.sandboxID)).toContain(sandboxId);
    const detail = await call({ name: API_HOST, path: `/sandboxes/${sandboxId}`, headers: { 'x-api-key': team.apiKey } });
    expect(detail).toMatchObject({ status: 200, body: { sandboxID: sandboxId, domain: DOMAIN } });
  });

  it('hands {port}-{sandboxId}.{domain} to the sandbox-traffic handler, with the real client address', async () => {
    const forwarded = await call({ name: sandboxHost(sandboxId), path: '/health', headers: { 'x-forwarded-for': '203.0.113.9', forwarded: 'for=203.0.113.9' } });
    expect(forwarded.status).toBe(200);
    expect(forwarded.body.url).toBe('/health');
    expect(forwarded.body.headers).toMatchObject({
      'e2b-sandbox-id': sandboxId,
      'e2b-sandbox-port': '49983',
      // Node's client names the non-default port in the Host; the handler forwards the Host as it came.
      host: `${sandboxHost(sandboxId)}:${gateway.tlsPort}`,
      'x-forwarded-for': '127.0.0.1',
      'x-forwarded-proto': 'https',
    });
    expect(forwarded.body.headers.forwarded).toBeUndefined();
    // The traffic handler's own refusals come back as they are: proof the request reached it.
    const unknown = await call({ name: sandboxHost('nosuchsandbox'), path: '/health' });
    expect(unknown).toMatchObject({ status: 502, body: { code: 502, sandboxId: 'nosuchsandbox', message: 'The sandbox was not found' } });
    const noToken = await call({ name: sandboxHost(sandboxId), path: '/envs' });
    expect(noToken).toMatchObject({ status: 401, body: { code: 401, message: expect.any(String) } });
  });

  it('streams a sandbox response as it comes, without buffering it', async () => {
    const name = sandboxHost(sandboxId);
    let whole: Promise<string> | undefined;
    const firstChunk = await new Promise<string>((resolve, reject) => {
      const req = httpsRequest(
        {
          host: name,
          servername: name,
          port: gateway.tlsPort,
          path: '/stream',
          lookup: loopbackLookup,
          ca: certs.ca,
          agent: false,
          headers: { 'x-access-token': stack.tokens.envdAccessToken(sandboxId) },
        },
        (res) => {
          res.setEncoding('utf8');
          let text = '';
          whole = new Promise((done) => res.on('end', () => done(text)));
          res.on('data', (chunk: string) => {
            if (!text) resolve(chunk);
            text += chunk;
          });
        },
      );
      req.on('error', reject);
      req.end();
    });
    // The upstream still holds the rest back: the first chunk crossed the TLS listener on its own.
    expect(firstChunk).toBe('first;');
    upstream.releaseStream?.();
    expect(await whole).toBe('first;rest');
  });

  it('tunnels a WebSocket upgrade on a sandbox host', async () => {
    const name = sandboxHost(sandboxId, 8080);
    const socket = tlsConnect({ host: '127.0.0.1', port: gateway.tlsPort, servername: name, ca: certs.ca });
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    socket.write(`GET /ws HTTP/1.1\r\nHost: ${name}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
    const handshake = await new Promise<string>((resolve) => socket.once('data', (chunk: Buffer) => resolve(chunk.toString())));
    expect(handshake).toMatch(/^HTTP\/1\.1 101 /);
    expect(handshake.toLowerCase()).toContain(`x-seen-sandbox: ${sandboxId}`);
    socket.write('ping');
    const echoed = await new Promise<string>((resolve) => socket.once('data', (chunk: Buffer) => resolve(chunk.toString())));
    expect(echoed).toBe('ping');
    socket.destroy();
  });

  it('refuses a Host that does not match the TLS server name, also on a reused keep-alive connection', async () => {
    const apiWithSandboxHost = await call({ name: API_HOST, path: '/health', headers: { host: sandboxHost(sandboxId) } });
    expect(apiWithSandboxHost).toMatchObject({ status: 421, body: { code: 421, message: expect.stringContaining('does not match the TLS server name') } });
    const sandboxWithApiHost = await call({ name: sandboxHost(sandboxId), path: '/health', headers: { host: API_HOST } });
    expect(sandboxWithApiHost.status).toBe(421);

    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await call({ name: API_HOST, path: '/health', agent });
      expect(first).toMatchObject({ status: 200, reusedSocket: false });
      const second = await call({ name: API_HOST, path: '/health', agent });
      expect(second).toMatchObject({ status: 200, reusedSocket: true });
      const switched = await call({ name: API_HOST, path: '/health', agent, headers: { host: sandboxHost(sandboxId) } });
      expect(switched).toMatchObject({ status: 421, reusedSocket: true });
    } finally {
      agent.destroy();
    }
  });

  it('refuses, during the handshake, names under the domain that nothing serves and names outside it', async () => {
    const refusedBefore = await handshakeFailures('unknown_server_name');
    const names = [`www.${DOMAIN}`, DOMAIN, 'api.other.test', `${API_HOST}.evil.test`];
    for (const name of names) {
      await expect(call({ name, path: '/health' })).rejects.toMatchObject({ code: 'ECONNRESET' });
    }
    expect(await handshakeFailures('unknown_server_name')).toBe(refusedBefore + names.length);
  });

  it('does not serve the internal /metrics scrape endpoint publicly (the HTTP port still does)', async () => {
    expect(await call({ name: API_HOST, path: '/metrics' })).toMatchObject({ status: 404, body: { code: 404 } });
    expect((await fetch(`${gateway.apiUrl}/metrics`)).status).toBe(200);
  });

  it('is refused by a client that does not trust the CA (the same call with it succeeds)', async () => {
    const failedBefore = await handshakeFailures('handshake_error');
    await expect(call({ name: API_HOST, path: '/health', ca: null })).rejects.toMatchObject({
      code: expect.stringMatching(/UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN/),
    });
    expect((await call({ name: API_HOST, path: '/health' })).status).toBe(200);
    expect(await handshakeFailures('handshake_error')).toBeGreaterThan(failedBefore);
  });

  it('offers only HTTP/1.1 in ALPN', async () => {
    const negotiate = (protocols: string[]) =>
      new Promise<string | false | null>((resolve, reject) => {
        const socket: TLSSocket = tlsConnect({ host: '127.0.0.1', port: gateway.tlsPort, servername: API_HOST, ca: certs.ca, ALPNProtocols: protocols }, () => {
          resolve(socket.alpnProtocol);
          socket.end();
        });
        socket.on('error', reject);
      });
    expect(await negotiate(['h2', 'http/1.1'])).toBe('http/1.1');
    await expect(negotiate(['h2'])).rejects.toMatchObject({ code: 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL' });
  });

  it('answers a connection without SNI with 421', async () => {
    const socket = tlsConnect({ host: '127.0.0.1', port: gateway.tlsPort, ca: certs.ca, checkServerIdentity: () => undefined });
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    socket.write(`GET /health HTTP/1.1\r\nHost: ${API_HOST}\r\n\r\n`);
    const answer = await new Promise<string>((resolve) => socket.once('data', (chunk: Buffer) => resolve(chunk.toString())));
    expect(answer).toMatch(/^HTTP\/1\.1 421 /);
    socket.destroy();
  });
});

describe('TLS listener certificate rotation', () => {
  it('serves a rotated certificate to new handshakes once it re-reads the files, and keeps the old one if the new is broken', async () => {
    const rotated = makeTestCertificates(DOMAIN);
    const listener = gateway.app.get(TlsEdgeListener);
    try {
      writeFileSync(certs.certFile, 'broken\n');
      listener.reloadCredentials();
      expect((await call({ name: API_HOST, path: '/health' })).status).toBe(200);

      copyFileSync(rotated.certFile, certs.certFile);
      copyFileSync(rotated.keyFile, certs.keyFile);
      listener.reloadCredentials();
      expect((await call({ name: API_HOST, path: '/health', ca: rotated.ca })).status).toBe(200);
      await expect(call({ name: API_HOST, path: '/health' })).rejects.toMatchObject({ code: expect.stringMatching(/UNABLE_TO|SELF_SIGNED/) });
      certs = { ...certs, ca: rotated.ca };
    } finally {
      rotated.remove();
    }
  });
});

describe('TLS listener configuration', () => {
  it('is off without a certificate', async () => {
    const plain = await stack.startGateway({ KILN_DOMAIN: DOMAIN });
    expect(plain.tlsPort).toBeUndefined();
    expect((await fetch(`${plain.apiUrl}/health`)).status).toBe(200);
  });

  it('refuses to start with a certificate it cannot read, naming the setting, before listening anywhere', async () => {
    const httpPort = await freePort();
    const env = await stack.gatewayEnv({ HTTP_PORT: String(httpPort), TLS_CERT_FILE: `${certs.dir}/missing.pem`, TLS_KEY_FILE: certs.keyFile });
    const started = startGateway(env, { host: '127.0.0.1' });
    await expect(started).rejects.toBeInstanceOf(ConfigError);
    await expect(started).rejects.toThrow(/^TLS_CERT_FILE cannot be read: ENOENT/);
    expect(await fetch(`http://127.0.0.1:${httpPort}/health`).catch(() => 'refused')).toBe('refused');
  });
});
