import { Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { IncomingMessage, STATUS_CODES, Server, ServerResponse, createServer } from 'node:http';
import type { Duplex } from 'node:stream';
import { once } from 'node:events';
import { createProxyServer } from 'http-proxy-3';
import type { ProxyServer } from 'http-proxy-3';
import { GatewayEnv } from '@kiln/config';
import { ErrorCode, KilnError, SandboxRoute, SandboxState } from '@kiln/contracts';
import { applyIngressHeaders, forwardableRequestTarget, ingressDecision } from '@kiln/contracts/sandbox-ingress';
import { MetricsRegistry } from '@kiln/telemetry';
import { ENVD_PORT, SANDBOX_ID_HEADER, SANDBOX_PORT_HEADER, SandboxAddress, sandboxAddressOf } from './sandbox-address';
import { SandboxRouteCache } from './sandbox-route.cache';
import { HostProxyConnections } from './host-proxy-connections';
import { DEFAULT_RETRY_AFTER_SECONDS } from '../http-errors/http-error-mapping';
import { refuseConnectMethod } from '../http-errors/connect-method';

/**
 * A refusal on the traffic listener. Its body is what E2B answers in the same place: its edge proxy's
 * `{code, message, sandboxId}` for a sandbox it cannot route to (plus Kiln's error_code; `canAutoResume` for a paused
 * one), and for a request envd
 * itself refuses (its access token, a file URL's signature) exactly envd's `{code, message}`, which the SDK's tests
 * compare whole.
 */
export interface TrafficRefusal {
  status: number;
  body: { code: number; message: string; error_code?: ErrorCode; sandboxId?: string; canAutoResume?: boolean };
  /** Sent as Retry-After: the refusal is an outage (scheduler or NATS unreachable), not an answer about the sandbox. */
  retryAfterSeconds?: number;
}

const INTERNAL_REFUSAL: TrafficRefusal = { status: 500, body: { code: 500, message: 'internal error', error_code: ErrorCode.Internal } };

/** How long a shutdown waits for in-flight sandbox traffic before cutting it. */
const SHUTDOWN_DRAIN_MS = 10_000;

const PAUSED_STATES: readonly SandboxState[] = [SandboxState.Pausing, SandboxState.Paused];

const ERROR_CODE_BY_INGRESS_STATUS = { 401: ErrorCode.Unauthenticated, 403: ErrorCode.PermissionDenied } as const;

/**
 * Decides what a request for `address` gets when the route lookup failed or the
 * sandbox cannot take traffic. A missing sandbox answers 502 like E2B's proxy:
 * that is the status the SDK reads as "sandbox not running" (`isRunning()` false,
 * envd calls fail with a timeout/not-found error instead of a generic one).
 */
export function refusalFor(address: SandboxAddress, failure: KilnError | SandboxRoute): TrafficRefusal | undefined {
  const sandboxId = address.sandboxId;
  if (failure instanceof KilnError) {
    if (failure.code === ErrorCode.NotFound) {
      // E2B's proxy words it exactly so; the sandbox id is in the body.
      return { status: 502, body: { code: 502, message: 'The sandbox was not found', error_code: ErrorCode.NotFound, sandboxId } };
    }
    const status = failure.httpStatus >= 500 ? 503 : failure.httpStatus;
    const retryAfterSeconds = status === 503 ? (failure.retryAfterSeconds ?? DEFAULT_RETRY_AFTER_SECONDS) : undefined;
    return { status, body: { code: status, message: failure.message, error_code: failure.code, sandboxId }, ...(retryAfterSeconds ? { retryAfterSeconds } : {}) };
  }
  if (PAUSED_STATES.includes(failure.state)) {
    // 502, as for any sandbox the proxy cannot reach: the SDK's isRunning() reads a 502 from envd's /health as "not
    // running" (E2B's own SDK suite checks it after a pause); the body says why (Sandbox.connect resumes it).
    return {
      status: 502,
      body: { code: 502, message: 'The sandbox is paused', error_code: ErrorCode.Conflict, sandboxId, canAutoResume: failure.autoResume ?? false },
    };
  }
  return undefined;
}

/**
 * How long an idle client connection is kept: as long as the API listener keeps its own (Fastify's default, 72 s).
 * SDKs reuse their connections; with Node's default of 5 s a client whose own idle timer fires late (a busy event loop)
 * picks a connection the listener is closing at that moment, and its request fails with ECONNRESET.
 */
export const IDLE_KEEP_ALIVE_MS = 72_000;

/**
 * The sandbox-traffic listener (E2B_SANDBOX_URL): finds the host agent that owns
 * the sandbox, applies the edge policy (`ingressDecision`: envd's access token on
 * port 49983, the traffic access token and Host mask on user ports) and streams the
 * request there, adding the E2b-Sandbox-Id/-Port headers the host agent routes on.
 * Nothing of a refused request is forwarded. Bodies are piped in both directions
 * (Connect streams, uploads, downloads); WebSocket upgrades are tunnelled.
 */
@Injectable()
export class SandboxTrafficProxy implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('traffic');
  private readonly server: Server;
  private readonly proxy: ProxyServer;

  /**
   * The listener's HTTP server. The gateway's TLS edge hands decrypted sandbox-host requests and upgrades to its
   * 'request'/'upgrade' handlers, so both ports share one routing and refusal path.
   */
  get httpServer(): Server {
    return this.server;
  }
  private readonly tunnels = new Set<Duplex>();
  private readonly requests;

  constructor(
    private readonly env: GatewayEnv,
    private readonly routes: SandboxRouteCache,
    metrics: MetricsRegistry,
    private readonly hosts: HostProxyConnections,
  ) {
    this.requests = metrics.counter('kiln_gateway_traffic_requests_total', 'Sandbox-traffic requests by outcome', ['outcome']);
    // Present from the start, so "nothing was forwarded" reads as an unchanged number rather than a missing series.
    for (const outcome of ['forwarded', 'upgraded', 'refused_401', 'refused_403']) this.requests.inc({ outcome }, 0);
    this.proxy = createProxyServer({ xfwd: true });
    this.proxy.on('proxyRes', (proxyRes, req, res) => {
      const sandboxId = req.headers[SANDBOX_ID_HEADER];
      // A host agent answering 502 for a sandbox means it no longer has it: look the route up afresh next time.
      if (proxyRes.statusCode === 502 && typeof sandboxId === 'string') this.routes.invalidate(sandboxId);
      // A body the host agent cut off (it does when the sandbox is destroyed mid-stream) must reach the caller as cut
      // off, at once: http-proxy would leave the caller's response open, and ending it cleanly would make a truncated
      // Connect stream or download look complete. The SDK reads the cut as "connection terminated" and probes /health.
      proxyRes.once('close', () => {
        if (proxyRes.complete || res.writableEnded || res.destroyed) return;
        if (typeof sandboxId === 'string') this.routes.invalidate(sandboxId);
        this.requests.inc({ outcome: 'upstream_cut' });
        res.destroy();
      });
    });
    this.server = createServer((req, res) => {
      this.handleRequest(req, res).catch((error) => this.failed(error, () => (res.headersSent ? res.destroy() : sendJson(res, INTERNAL_REFUSAL))));
    });
    this.server.keepAliveTimeout = IDLE_KEEP_ALIVE_MS;
    this.server.on('upgrade', (req, socket, head) => {
      this.handleUpgrade(req, socket, head).catch((error) => this.failed(error, () => writeRawJson(socket, INTERNAL_REFUSAL)));
    });
    this.server.on('connect', (_req, socket: Duplex) => refuseConnectMethod(socket));
    this.server.on('clientError', (error, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      else socket.destroy(error);
    });
  }

  /** The bound port (differs from SANDBOX_PROXY_PORT only when that is 0). */
  get port(): number {
    const address = this.server.address();
    return typeof address === 'object' && address ? address.port : this.env.SANDBOX_PROXY_PORT;
  }

  async onApplicationBootstrap(): Promise<void> {
    this.server.listen(this.env.SANDBOX_PROXY_PORT, '0.0.0.0');
    await Promise.race([once(this.server, 'listening'), once(this.server, 'error').then(([error]) => Promise.reject(error))]);
    this.logger.log(`sandbox traffic listening on :${this.port}`);
  }

  /**
   * Stops accepting, lets in-flight requests (long Connect streams included) finish
   * for up to SHUTDOWN_DRAIN_MS, then cuts whatever is left, WebSocket tunnels too.
   */
  async onApplicationShutdown(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    // Keep-alive connections turn idle as their last request ends; close them as they do.
    this.server.closeIdleConnections();
    const reaper = setInterval(() => this.server.closeIdleConnections(), 100);
    let timer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([
      closed.then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), SHUTDOWN_DRAIN_MS))),
    ]);
    clearTimeout(timer);
    clearInterval(reaper);
    if (!drained) this.logger.warn(`closing ${this.tunnels.size} tunnels and the remaining requests after ${SHUTDOWN_DRAIN_MS} ms`);
    for (const tunnel of this.tunnels) tunnel.destroy();
    this.server.closeAllConnections();
    await closed;
    await this.hosts.close();
    this.proxy.close();
  }

  /** A bug, not an outcome: logged with its stack, answered with a bare 500. */
  private failed(error: unknown, answer: () => void): void {
    this.logger.error(`sandbox traffic handler failed: ${error instanceof Error ? error.stack : String(error)}`);
    this.requests.inc({ outcome: 'internal_error' });
    answer();
  }

  private async handleRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const target = await this.target(req);
    if ('refusal' in target) {
      this.requests.inc({ outcome: `refused_${target.refusal.status}` });
      // Read and drop whatever body the caller sent; none of it goes anywhere.
      req.resume();
      sendJson(res, target.refusal);
      return;
    }
    this.requests.inc({ outcome: 'forwarded' });
    this.proxy.web(req, res, { target: target.route.proxyUrl, headers: target.headers, agent: this.hosts.agentFor(target.route.proxyUrl) }, (error) => {
      this.routes.invalidate(target.address.sandboxId);
      this.requests.inc({ outcome: 'upstream_error' });
      this.logger.warn(`forwarding to ${target.route.proxyUrl} for sandbox ${target.address.sandboxId} failed: ${error.message}`);
      if (!res.headersSent) {
        sendJson(res, {
          status: 502,
          body: {
            code: 502,
            message: `sandbox ${target.address.sandboxId} is unreachable: its host did not answer`,
            error_code: ErrorCode.Unavailable,
            sandboxId: target.address.sandboxId,
          },
        });
      } else {
        res.destroy();
      }
    });
  }

  private async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', () => socket.destroy());
    const target = await this.target(req);
    if ('refusal' in target) {
      this.requests.inc({ outcome: `refused_${target.refusal.status}` });
      writeRawJson(socket, target.refusal);
      return;
    }
    this.tunnels.add(socket);
    socket.once('close', () => this.tunnels.delete(socket));
    this.requests.inc({ outcome: 'upgraded' });
    this.proxy.ws(req, socket, head, { target: target.route.proxyUrl, headers: target.headers, agent: this.hosts.agentFor(target.route.proxyUrl) }, (error) => {
      this.routes.invalidate(target.address.sandboxId);
      this.logger.warn(`websocket to sandbox ${target.address.sandboxId} failed: ${error.message}`);
      socket.destroy();
    });
  }

  private async target(
    req: IncomingMessage,
  ): Promise<{ refusal: TrafficRefusal } | { address: SandboxAddress; route: SandboxRoute; headers: Record<string, string> }> {
    if (!forwardableRequestTarget(req.url)) {
      return { refusal: { status: 400, body: { code: 400, message: 'malformed request target: send a path', error_code: ErrorCode.InvalidArgument } } };
    }
    const parsed = sandboxAddressOf(req.headers, this.env.KILN_DOMAIN);
    if (!parsed.ok) {
      const message =
        parsed.reason ??
        `no sandbox named: send ${SANDBOX_ID_HEADER} and ${SANDBOX_PORT_HEADER} headers or use a {port}-{sandboxId}.${this.env.KILN_DOMAIN} host`;
      return { refusal: { status: 400, body: { code: 400, message, error_code: ErrorCode.InvalidArgument } } };
    }
    const { address } = parsed;
    let route: SandboxRoute;
    try {
      route = await this.routes.resolve(address.sandboxId);
      // autoResume: the request waits for the resume (shared by every request meanwhile), then goes through.
      if (PAUSED_STATES.includes(route.state) && route.autoResume) route = await this.routes.resumeForTraffic(address.sandboxId);
    } catch (error) {
      const kilnError = error instanceof KilnError ? error : new KilnError(ErrorCode.Internal, 'route lookup failed');
      if (!(error instanceof KilnError)) this.logger.error(`route lookup for ${address.sandboxId} failed: ${String(error)}`);
      return { refusal: refusalFor(address, kilnError) as TrafficRefusal };
    }
    const refusal = refusalFor(address, route);
    if (refusal) return { refusal };
    if (!this.hosts.canReach(route.proxyUrl)) {
      // Only outside production (where KILN_INTERNAL_* are required): a configuration error, not the sandbox's.
      const message = `sandbox ${address.sandboxId}'s host speaks internal mTLS and this gateway has no internal certificate (KILN_INTERNAL_*)`;
      return { refusal: { status: 503, body: { code: 503, message, error_code: ErrorCode.Unavailable, sandboxId: address.sandboxId } } };
    }
    const decision = ingressDecision(req, address.port, route);
    if (!decision.allowed) {
      const { status, message } = decision;
      if (address.port === ENVD_PORT) return { refusal: { status, body: { code: status, message } } };
      return { refusal: { status, body: { code: status, message, error_code: ERROR_CODE_BY_INGRESS_STATUS[status], sandboxId: address.sandboxId } } };
    }
    applyIngressHeaders(req.headers, decision);
    // Also on the incoming request, so the proxyRes hook knows which route to drop for Host-addressed traffic.
    req.headers[SANDBOX_ID_HEADER] = address.sandboxId;
    return {
      address,
      route,
      headers: { [SANDBOX_ID_HEADER]: address.sandboxId, [SANDBOX_PORT_HEADER]: String(address.port) },
    };
  }
}

function sendJson(res: ServerResponse, refusal: TrafficRefusal): void {
  const body = JSON.stringify(refusal.body);
  res.writeHead(refusal.status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    ...(refusal.retryAfterSeconds !== undefined ? { 'Retry-After': String(Math.ceil(refusal.retryAfterSeconds)) } : {}),
  });
  res.end(body);
}

function writeRawJson(socket: Duplex, refusal: TrafficRefusal): void {
  const body = JSON.stringify(refusal.body);
  const retryAfter = refusal.retryAfterSeconds !== undefined ? `Retry-After: ${Math.ceil(refusal.retryAfterSeconds)}\r\n` : '';
  socket.end(
    `HTTP/1.1 ${refusal.status} ${STATUS_CODES[refusal.status] ?? 'Error'}\r\n` +
      `Content-Type: application/json; charset=utf-8\r\n${retryAfter}Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}
