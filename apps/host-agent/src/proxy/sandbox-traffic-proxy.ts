import { Agent, IncomingMessage, Server, ServerResponse, createServer } from 'node:http';
import { Socket } from 'node:net';
import { Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { HostAgentEnv } from '@kiln/config';
import { createProxyServer } from 'http-proxy-3';
import { GUEST_AGENT_PORT } from '../network';
import { SandboxManager } from '../sandbox/sandbox-manager.service';

const SANDBOX_HEADER = 'e2b-sandbox-id';
const PORT_HEADER = 'e2b-sandbox-port';
/** `{port}-{sandboxId}.{anything}` — the E2B host form, also accepted directly by the agent. */
const HOST_FORM = /^(\d{1,5})-([a-z0-9][a-z0-9-]{0,63})\./;

export interface TrafficTarget {
  sandboxId: string;
  port: number;
}

function headerOf(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** Reads the sandbox and port a request is for; null when it names neither. */
export function trafficTargetOf(req: IncomingMessage): TrafficTarget | null | 'bad-port' {
  const sandboxId = headerOf(req, SANDBOX_HEADER);
  if (sandboxId) {
    const rawPort = headerOf(req, PORT_HEADER);
    const port = rawPort === undefined ? GUEST_AGENT_PORT : Number(rawPort);
    if (!Number.isInteger(port) || port < 1 || port > 65535) return 'bad-port';
    return { sandboxId, port };
  }
  const match = HOST_FORM.exec(headerOf(req, 'host') ?? '');
  if (!match) return null;
  const port = Number(match[1]);
  if (port < 1 || port > 65535) return 'bad-port';
  return { sandboxId: match[2], port };
}

function reject(res: ServerResponse, status: number, message: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ code: status, message });
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/**
 * Reverse proxy from (sandbox id, port) to the sandbox's network slot. Per request it
 * does one map lookup; bodies stream both ways (Connect streams, uploads, downloads)
 * and WebSocket upgrades are tunnelled.
 */
@Injectable()
export class SandboxTrafficProxy implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(SandboxTrafficProxy.name);
  private server?: Server;
  private readonly proxy = createProxyServer({ xfwd: true, ws: true, proxyTimeout: 0 });

  constructor(
    private readonly env: HostAgentEnv,
    private readonly sandboxes: SandboxManager,
  ) {
    this.proxy.on('error', (error, _req, res) => {
      if (res instanceof ServerResponse) reject(res, 502, `sandbox unreachable: ${error.message}`);
      else (res as Socket | undefined)?.destroy();
    });
  }

  private upstream(target: TrafficTarget): { target: string; agent: Agent } | null {
    const live = this.sandboxes.get(target.sandboxId);
    if (!live || live.state !== 'running') return null;
    return { target: `http://${live.slot.hostAddress}:${target.port}`, agent: live.guestConnections };
  }

  handle = (req: IncomingMessage, res: ServerResponse): void => {
    const target = trafficTargetOf(req);
    if (target === 'bad-port') return reject(res, 400, 'E2b-Sandbox-Port must be a port number');
    if (!target) return reject(res, 400, 'request names no sandbox (E2b-Sandbox-Id header or {port}-{id}.{domain} host)');
    const upstream = this.upstream(target);
    if (!upstream) return reject(res, 502, `sandbox ${target.sandboxId} is not running on this host`);
    this.proxy.web(req, res, upstream);
  };

  private upgrade = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    const target = trafficTargetOf(req);
    const upstream = target && target !== 'bad-port' ? this.upstream(target) : null;
    if (!upstream) {
      socket.end('HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    this.proxy.ws(req, socket, head, upstream);
  };

  async onApplicationBootstrap(): Promise<void> {
    this.server = createServer(this.handle);
    this.server.on('upgrade', this.upgrade);
    // Long-lived Connect streams and PTY sessions must not be cut by server timeouts.
    this.server.requestTimeout = 0;
    this.server.headersTimeout = 30_000;
    this.server.keepAliveTimeout = 65_000;
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.env.PROXY_PORT, '0.0.0.0', () => resolve());
    });
    this.logger.log(`sandbox traffic proxy listening on :${this.env.PROXY_PORT}`);
  }

  async onApplicationShutdown(): Promise<void> {
    this.proxy.close();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.server?.closeAllConnections();
  }
}
