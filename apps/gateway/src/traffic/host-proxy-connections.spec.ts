import 'reflect-metadata';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { IncomingMessage, Server, ServerResponse, createServer, request } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import type { GatewayEnv } from '@kiln/config';
import { httpsServerOptions, identityOfCertificate, loadInternalTls } from '@kiln/config/internal-tls';
import { createProxyServer } from 'http-proxy-3';
import { HostProxyConnections } from './host-proxy-connections';

/**
 * The gateway's side of internal mTLS to host agents' proxies: it presents its certificate, accepts only a host
 * agent's, and forwards through http-proxy-3 with the agent for the proxyUrl's scheme as SandboxTrafficProxy does.
 */
const ROOT = join(__dirname, '..', '..', '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'kiln-gateway-mtls-'));
const files = (service: string) => ({ caFile: join(dir, 'ca.pem'), certFile: join(dir, `${service}.pem`), keyFile: join(dir, `${service}-key.pem`) });
const envOf = (service: string) =>
  ({ KILN_INTERNAL_CA_FILE: files(service).caFile, KILN_INTERNAL_CERT_FILE: files(service).certFile, KILN_INTERNAL_KEY_FILE: files(service).keyFile }) as GatewayEnv;

/** Answers with the identity of the client certificate it saw. */
function whoAmI(req: IncomingMessage, res: ServerResponse): void {
  const identity = identityOfCertificate((req.socket as TLSSocket).getPeerCertificate?.()) ?? 'none';
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ identity }));
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

let hostAgent: Server;
let impostor: Server;
let plain: Server;
let front: Server;
let hostAgentUrl: string;
let impostorUrl: string;
let plainUrl: string;
let connections: HostProxyConnections;

/** GET through a front proxy that forwards to `target` the way SandboxTrafficProxy does. */
function viaProxy(target: string): Promise<{ status?: number; body: string }> {
  const proxy = createProxyServer({ xfwd: true });
  front.removeAllListeners('request');
  front.on('request', (req, res) =>
    proxy.web(req, res, { target, agent: connections.agentFor(target) }, (error) => {
      res.writeHead(502);
      res.end(`upstream failed: ${error.message}`);
    }),
  );
  return new Promise((resolve, reject) => {
    const req = request(`http://${(front.address() as AddressInfo).address}:${(front.address() as AddressInfo).port}/`, (res) => {
      let body = '';
      res.on('data', (chunk) => (body += String(chunk)));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  execFileSync('bash', [join(ROOT, 'tools', 'stack', 'internal-tls.sh'), dir, '127.0.0.1', 'scheduler', 'gateway', 'host-agent']);
  hostAgent = createHttpsServer(httpsServerOptions(loadInternalTls(files('host-agent'))), whoAmI);
  // From the right CA, but the scheduler's certificate: not a host agent.
  impostor = createHttpsServer(httpsServerOptions(loadInternalTls(files('scheduler'))), whoAmI);
  plain = createServer(whoAmI);
  front = createServer();
  hostAgentUrl = `https://${await listen(hostAgent)}`;
  impostorUrl = `https://${await listen(impostor)}`;
  plainUrl = `http://${await listen(plain)}`;
  await listen(front);
  connections = new HostProxyConnections(envOf('gateway'));
});

afterAll(async () => {
  await connections?.close();
  for (const server of [hostAgent, impostor, plain, front]) {
    server?.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve));
  }
  rmSync(dir, { recursive: true, force: true });
});

describe('HostProxyConnections', () => {
  it('forwards to an https host proxy presenting the gateway certificate (and to an http one as before)', async () => {
    expect(await viaProxy(hostAgentUrl)).toEqual({ status: 200, body: JSON.stringify({ identity: 'gateway' }) });
    expect(await viaProxy(plainUrl)).toEqual({ status: 200, body: JSON.stringify({ identity: 'none' }) });
  });

  it('refuses a server whose certificate is not a host agent’s', async () => {
    const answer = await viaProxy(impostorUrl);
    expect(answer.status).toBe(502);
    expect(answer.body).toContain('not spiffe://kiln/host-agent');
  });

  it('fetches (guest metrics) over the same mTLS', async () => {
    const response = await connections.fetch(new URL('/metrics', hostAgentUrl), { headers: {}, signal: AbortSignal.timeout(5_000) });
    expect(await response.json()).toEqual({ identity: 'gateway' });
    await expect(connections.fetch(new URL('/metrics', impostorUrl), { headers: {}, signal: AbortSignal.timeout(5_000) })).rejects.toThrow();
  });

  it('cannot reach an https host proxy without internal TLS configured', async () => {
    const unconfigured = new HostProxyConnections({} as GatewayEnv);
    try {
      expect([unconfigured.canReach(hostAgentUrl), unconfigured.canReach(plainUrl), connections.canReach(hostAgentUrl)]).toEqual([false, true, true]);
      expect(() => unconfigured.agentFor(hostAgentUrl)).toThrow(/needs internal mTLS/);
      await expect(unconfigured.fetch(new URL(hostAgentUrl), { headers: {}, signal: AbortSignal.timeout(5_000) })).rejects.toThrow(/needs internal mTLS/);
    } finally {
      await unconfigured.close();
    }
  });
});
