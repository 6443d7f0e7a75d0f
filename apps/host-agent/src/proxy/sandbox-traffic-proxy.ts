import { Agent, IncomingMessage, STATUS_CODES, Server, ServerResponse, createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { Duplex } from 'node:stream';
import { Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { HostAgentEnv } from '@kiln/config';
import { InternalService, InternalTlsMaterial, httpsServerOptions, internalTlsOf, peerRefusal } from '@kiln/config/internal-tls';
import { applyIngressHeaders, forwardableRequestTarget, ingressDecision } from '@kiln/contracts/sandbox-ingress';
import { MetricsRegistry } from '@kiln/telemetry';
import { createProxyServer } from 'http-proxy-3';
import { canonicaliseHeaderNames } from './header-case';
import { GUEST_AGENT_PORT } from '../network';
import { SandboxManager } from '../sandbox/sandbox-manager.service';
import { DestroyEnding, SandboxConnections, refusalBody } from './sandbox-connections';

const SANDBOX_HEADER = 'e2b-sandbox-id';
const PORT_HEADER = 'e2b-sandbox-port';
/** `{port}-{sandboxId}.{anything}` — the E2B host form, also accepted directly by the agent. */
const HOST_FORM = /^(\d{1,5})-([a-z0-9][a-z0-9-]{0,63})\./;

export interface TrafficTarget {
  sandboxId: string;
  port: number;
}

/** Where a request ended up, as counted in kiln_agent_proxy_requests_total. */
type ProxyOutcome =
  | 'forwarded'
  | 'upgraded'
  | 'refused_401'
  | 'refused_403'
  | 'refused_caller'
  | 'bad_request'
  | 'no_sandbox'
  | 'upstream_error'
  | 'upstream_cut'
  | 'answered_early';

/**
 * How a write of a request body fails once the guest has closed its side: a guest that answers before reading the
 * whole body (envd refusing an upload on its headers) and then closes gives the proxy one of these on its next write.
 */
const CLOSED_BY_PEER = new Set(['EPIPE', 'ECONNRESET']);

/**
 * How long a client's connection stays half-closed after a reply to a body nobody reads any more, before it is closed.
 * Closing at once, with the client's bytes still arriving, is a reset, and a reset can overtake a reply the client
 * has not read yet (what the guest's own early close does to this proxy). Go's server waits 500 ms for the same reason.
 */
const UNREAD_BODY_LINGER_MS = 1_000;

/** Who may send sandbox traffic through this proxy: only the gateway, which has applied the edge policy first. */
const PROXY_CALLERS: readonly InternalService[] = ['gateway'];

interface Refusal {
  status: number;
  message: string;
  outcome: ProxyOutcome;
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
  const body = refusalBody(status, message);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** Half-closes a client's connection, drops what it still sends, and closes it once the client has or the linger is over. */
function closeLingering(socket: Socket): void {
  if (socket.destroyed || socket.writableEnded) return;
  socket.end();
  const cut = setTimeout(() => socket.destroy(), UNREAD_BODY_LINGER_MS);
  socket.once('close', () => clearTimeout(cut));
}

/**
 * Node closes a client connection outright the moment a `connection: close` reply is written (destroySoon); with the
 * client's body still arriving, that is a reset under the reply. This connection's close lingers instead.
 */
function lingerOnClose(socket: Socket): void {
  socket.destroySoon = () => closeLingering(socket);
}

/** Requests endUnreadBody has ended. */
const unreadBodies = new WeakSet<IncomingMessage>();

type WriteDone = (error?: Error | null) => void;

/** What to do when the guest closes a connection under the request now using it, by connection (keep-alive reuses them). */
const onGuestClosedWrites = new WeakMap<Socket, () => void>();
/** Guest connections whose writes are guarded. */
const watchedConnections = new WeakSet<Socket>();
/** Guest connections whose writes fail because the guest closed them: every write to one is dropped. */
const closedToWrites = new WeakSet<Socket>();

/**
 * Keeps a guest connection readable after the guest has closed it under a request body. Node destroys a socket on its
 * first failed write, with whatever the guest answered still unread in the kernel's buffer: an early answer (envd's
 * 400 to an upload it refuses on its headers) would be lost, and the client would get a 502 for it. Here the write the
 * guest's close made fail, and every later one on that connection, is dropped instead, and the connection ends
 * through its read side, which delivers the answer first (or, with none, ends the request with "socket hang up").
 */
function watchForGuestClose(socket: Socket, onClosed: () => void): void {
  onGuestClosedWrites.set(socket, onClosed);
  if (watchedConnections.has(socket)) return;
  watchedConnections.add(socket);
  const guarded = (done: WriteDone): WriteDone => (error) => {
    if (!error || !CLOSED_BY_PEER.has((error as NodeJS.ErrnoException).code ?? '')) return done(error);
    if (!closedToWrites.has(socket)) {
      closedToWrites.add(socket);
      onGuestClosedWrites.get(socket)?.();
    }
    done();
  };
  const write = socket._write.bind(socket);
  socket._write = (chunk, encoding, done) => (closedToWrites.has(socket) ? done() : write(chunk, encoding, guarded(done)));
  const writev = socket._writev?.bind(socket);
  if (writev) socket._writev = (chunks, done) => (closedToWrites.has(socket) ? done() : writev(chunks, guarded(done)));
}

/**
 * Ends a request whose body the guest will take no more of (its connection failed) without reading that body to its
 * end or leaving the client blocked on it: the rest is read and dropped, the reply says `connection: close`, and once
 * it is written the connection is closed with a linger (closeLingering). Nothing to do when the body has all arrived:
 * that connection stays usable.
 */
function endUnreadBody(req: IncomingMessage, res: ServerResponse): void {
  if (req.complete || req.destroyed || unreadBodies.has(req)) return;
  unreadBodies.add(req);
  req.unpipe();
  req.resume();
  if (!res.headersSent) res.setHeader('connection', 'close');
  const socket = req.socket;
  lingerOnClose(socket);
  if (res.writableFinished) closeLingering(socket);
  else res.once('finish', () => closeLingering(socket));
}

function rejectUpgrade(socket: Duplex, status: number, message: string): void {
  const body = refusalBody(status, message);
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\nconnection: close\r\n` +
      `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

/**
 * Reverse proxy from (sandbox id, port) to the sandbox's network slot. Per request it
 * does one map lookup and applies the edge policy (`ingressDecision`, the same one
 * the gateway applies) before anything is forwarded: this port is reachable without
 * the gateway, so the envd access token is checked here too, from the sandbox's
 * record. Traffic access tokens and Host masks of user ports are the gateway's to
 * enforce: the host does not have them (yet), so user ports pass here as public.
 * Bodies stream both ways (Connect streams, uploads, downloads) and WebSocket
 * upgrades are tunnelled. Every open request and tunnel is tracked by sandbox
 * (SandboxConnections) and ended the moment the sandbox's teardown begins, and a
 * response the guest cuts off mid-body is cut off downstream too: a dead VM resets
 * none of its connections, and http-proxy ends nothing when an upstream body aborts.
 * A guest that answers before it has read the whole body and closes (envd refusing an
 * upload on its headers) has its answer relayed, not a 502: only a guest that never
 * answered is unreachable. Either way the rest of the client's body is dropped and its
 * connection closed after the reply (watchForGuestClose, endUnreadBody).
 */
@Injectable()
export class SandboxTrafficProxy implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(SandboxTrafficProxy.name);
  private server?: Server;
  private readonly proxy = createProxyServer({ xfwd: true, ws: true, proxyTimeout: 0 });
  private readonly requests;
  private readonly endedByDestroy;
  /** Open requests and tunnels by sandbox, ended when the sandbox is (read-only outside: metrics and tests). */
  readonly connections = new SandboxConnections();
  private readonly stopWatchingEndings: () => void;
  /** Internal mTLS: set, the proxy is HTTPS and serves only callers whose certificate names the gateway. */
  private readonly internalTls?: InternalTlsMaterial;
  /** Requests the guest has sent response headers for. */
  private readonly answeredByGuest = new WeakSet<IncomingMessage>();
  /** Requests whose body the guest closed its connection under. */
  private readonly bodyClosedByGuest = new WeakSet<IncomingMessage>();
  /** Requests counted as answered_early. */
  private readonly answeredEarly = new WeakSet<IncomingMessage>();
  /** Requests whose upstream failure has been handled: a later error of the same request (the client's side closing) is not a second one. */
  private readonly failedUpstream = new WeakSet<IncomingMessage>();

  constructor(
    private readonly env: HostAgentEnv,
    private readonly sandboxes: SandboxManager,
    metrics: MetricsRegistry,
  ) {
    this.requests = metrics.counter('kiln_agent_proxy_requests_total', 'Sandbox-traffic requests on the host proxy, by outcome', ['outcome']);
    this.endedByDestroy = metrics.counter(
      'kiln_agent_proxy_ended_by_destroy_total',
      'Proxied requests and tunnels ended because their sandbox was destroyed, by how (refused: no response yet; cut: body cut mid-stream; tunnel: upgraded connection closed)',
      ['how'],
    );
    metrics.gauge('kiln_agent_proxy_open_connections', 'Proxied requests and tunnels open on the host proxy', [], (gauge) => gauge.set(this.connections.count()));
    // Present from the start, so "nothing reached the guest" reads as an unchanged number rather than a missing series.
    for (const outcome of ['forwarded', 'upgraded', 'refused_401', 'refused_403'] as const) this.requests.inc({ outcome }, 0);
    for (const how of ['refused', 'cut', 'tunnel'] satisfies DestroyEnding[]) this.endedByDestroy.inc({ how }, 0);
    this.proxy.on('error', (error, req, res) => {
      if (!(res instanceof ServerResponse)) {
        this.requests.inc({ outcome: 'upstream_error' });
        (res as Socket | undefined)?.destroy();
        return;
      }
      if (this.failedUpstream.has(req)) return;
      this.failedUpstream.add(req);
      // Whatever the guest did, it takes no more of the body.
      endUnreadBody(req, res);
      // The guest answered and then closed before reading the whole body: its answer is the reply, and http-proxy is
      // already relaying it (a cut-off answer is cut downstream by the proxyRes handler). Only a guest that never
      // answered is unreachable.
      if (this.answeredByGuest.has(req) && CLOSED_BY_PEER.has((error as NodeJS.ErrnoException).code ?? '')) {
        this.countAnsweredEarly(req);
        return;
      }
      // A response already answered (by the destroy path) is finished: its upstream failing afterwards changes nothing.
      if (res.writableEnded) return;
      this.requests.inc({ outcome: 'upstream_error' });
      reject(res, 502, `sandbox unreachable: ${error.message}`);
    });
    this.proxy.on('proxyReq', (proxyReq, req, res, _options, socket) => {
      canonicaliseHeaderNames(proxyReq);
      watchForGuestClose(socket, () => this.guestStoppedReading(req, res));
      // A guest may also close cleanly once it has answered: no write fails then, http-proxy's pipe just stalls on a
      // request that is gone, and the client would wait on a body nobody reads.
      proxyReq.once('close', () => this.guestStoppedReading(req, res));
    });
    // http-proxy pipes the guest's body and never ends the client's response when that body aborts: the client would
    // wait for the rest forever. Cutting it the same way lets the client see the connection end.
    this.proxy.on('proxyRes', (proxyRes, req, res) => {
      this.answeredByGuest.add(req);
      // An answer before the whole body (a refusal; its connection: close is relayed): the client is still sending.
      if (!req.complete) lingerOnClose(req.socket);
      if (this.bodyClosedByGuest.has(req)) {
        // Read after the guest closed under the body: the client's connection closes after this answer (endUnreadBody).
        proxyRes.headers.connection = 'close';
        this.countAnsweredEarly(req);
      }
      proxyRes.once('close', () => {
        if (proxyRes.complete || !(res instanceof ServerResponse) || res.writableEnded || res.destroyed) return;
        this.requests.inc({ outcome: 'upstream_cut' });
        res.destroy();
      });
    });
    this.stopWatchingEndings = sandboxes.onSandboxEnding((sandboxId) => this.endConnectionsOf(sandboxId));
    this.internalTls = internalTlsOf(env);
  }

  /** The guest's connection of a request closed (or failed to take writes) while the client may still be sending the body. */
  private guestStoppedReading(req: IncomingMessage, res: ServerResponse): void {
    if (req.complete || req.destroyed || this.bodyClosedByGuest.has(req)) return;
    this.bodyClosedByGuest.add(req);
    endUnreadBody(req, res);
    if (this.answeredByGuest.has(req)) this.countAnsweredEarly(req);
  }

  /** Counts a guest's answer to a request whose body it closed its connection under, once. */
  private countAnsweredEarly(req: IncomingMessage): void {
    if (this.answeredEarly.has(req)) return;
    this.answeredEarly.add(req);
    this.requests.inc({ outcome: 'answered_early' });
  }

  /**
   * Why the connection's peer may not use the proxy, or undefined. TLS already refused peers without a certificate
   * from the internal CA; a CA-signed certificate of another service (the scheduler's) gets a 403 here.
   */
  private callerRefusal(req: IncomingMessage): Refusal | undefined {
    if (!this.internalTls) return undefined;
    const socket = req.socket;
    const message = socket instanceof TLSSocket ? peerRefusal(socket.getPeerCertificate(), PROXY_CALLERS) : 'the proxy only answers over TLS';
    return message ? { status: 403, message, outcome: 'refused_caller' } : undefined;
  }

  /** Ends every open request and tunnel of a sandbox whose teardown has begun. */
  private endConnectionsOf(sandboxId: string): void {
    const endings = this.connections.endAll(sandboxId, `sandbox ${sandboxId} was destroyed while the request was in flight`);
    for (const how of endings) this.endedByDestroy.inc({ how });
    if (endings.length) this.logger.log(`sandbox ${sandboxId} destroyed: ended ${endings.length} open connection(s) (${endings.join(', ')})`);
  }

  /** The bound port (differs from PROXY_PORT only when that is 0). */
  get port(): number {
    const address = this.server?.address();
    return typeof address === 'object' && address ? address.port : this.env.PROXY_PORT;
  }

  /** Where the request goes, or why it goes nowhere. */
  private route(req: IncomingMessage): { sandboxId: string; upstream: { target: string; agent: Agent } } | { refusal: Refusal } {
    const callerRefusal = this.callerRefusal(req);
    if (callerRefusal) return { refusal: callerRefusal };
    // http-proxy throws on some targets (`/\`), and this handler is synchronous: that would be an uncaught exception.
    if (!forwardableRequestTarget(req.url)) return { refusal: { status: 400, message: 'malformed request target: send a path', outcome: 'bad_request' } };
    const target = trafficTargetOf(req);
    if (target === 'bad-port') return { refusal: { status: 400, message: 'E2b-Sandbox-Port must be a port number', outcome: 'bad_request' } };
    if (!target) {
      return { refusal: { status: 400, message: 'request names no sandbox (E2b-Sandbox-Id header or {port}-{id}.{domain} host)', outcome: 'bad_request' } };
    }
    const live = this.sandboxes.get(target.sandboxId);
    if (!live || live.state !== 'running' || !live.slot) {
      return { refusal: { status: 502, message: `sandbox ${target.sandboxId} is not running on this host`, outcome: 'no_sandbox' } };
    }
    const decision = ingressDecision(req, target.port, { envdAccessToken: live.record.envdAccessToken });
    if (!decision.allowed) return { refusal: { status: decision.status, message: decision.message, outcome: `refused_${decision.status}` } };
    applyIngressHeaders(req.headers, decision);
    return { sandboxId: target.sandboxId, upstream: { target: `http://${live.slot.hostAddress}:${target.port}`, agent: live.guestConnections } };
  }

  handle = (req: IncomingMessage, res: ServerResponse): void => {
    const routed = this.route(req);
    if ('refusal' in routed) {
      this.requests.inc({ outcome: routed.refusal.outcome });
      // Read and drop whatever body the caller sent; none of it reaches the guest.
      req.resume();
      return reject(res, routed.refusal.status, routed.refusal.message);
    }
    this.requests.inc({ outcome: 'forwarded' });
    // Tracked in the same tick as the route check: a teardown cannot begin between the two and miss it.
    this.connections.trackRequest(routed.sandboxId, res);
    this.proxy.web(req, res, routed.upstream);
  };

  private upgrade = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    socket.on('error', () => socket.destroy());
    const routed = this.route(req);
    if ('refusal' in routed) {
      this.requests.inc({ outcome: routed.refusal.outcome });
      return rejectUpgrade(socket, routed.refusal.status, routed.refusal.message);
    }
    this.requests.inc({ outcome: 'upgraded' });
    this.connections.trackTunnel(routed.sandboxId, socket);
    this.proxy.ws(req, socket, head, routed.upstream);
  };

  async onApplicationBootstrap(): Promise<void> {
    this.server = this.internalTls ? createHttpsServer(httpsServerOptions(this.internalTls), this.handle) : createServer(this.handle);
    this.server.on('upgrade', this.upgrade);
    // Long-lived Connect streams and PTY sessions must not be cut by server timeouts.
    this.server.requestTimeout = 0;
    this.server.headersTimeout = 30_000;
    this.server.keepAliveTimeout = 65_000;
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.env.PROXY_PORT, this.env.PROXY_HOST ?? this.env.KILN_HOST_ADDRESS, () => resolve());
    });
    this.logger.log(`sandbox traffic proxy listening on ${this.internalTls ? 'https (mTLS, gateway only)' : 'http'} :${this.port}`);
  }

  async onApplicationShutdown(): Promise<void> {
    this.stopWatchingEndings();
    this.proxy.close();
    const closed = new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    // Before the wait, not after it: close() waits for every open connection, and a held stream may never end on its own.
    this.server?.closeAllConnections();
    await closed;
  }
}
