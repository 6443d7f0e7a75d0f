import { BeforeApplicationShutdown, Inject, Injectable, Logger } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { FastifyInstance } from 'fastify';
import { once } from 'node:events';
import { IncomingMessage, Server as HttpServer, STATUS_CODES, ServerResponse } from 'node:http';
import { Server as HttpsServer, createServer } from 'node:https';
import type { Duplex } from 'node:stream';
import { SecureContext, TLSSocket, createSecureContext } from 'node:tls';
import { GatewayEnv } from '@kiln/config';
import { MetricsRegistry } from '@kiln/telemetry';
import { IDLE_KEEP_ALIVE_MS, SandboxTrafficProxy } from '../traffic/sandbox-traffic.proxy';
import { EdgeRefusal, edgeRequestRoute, edgeRouteOf } from './edge-host';
import { TlsEdgeCredentials, readTlsEdgeCredentials } from './tls-credentials';

/** DI token of the credentials startGateway read (and checked) before the app was created; undefined: TLS is off. */
export const TLS_EDGE_CREDENTIALS = Symbol('TLS_EDGE_CREDENTIALS');

/** The listener serves HTTP/1.1 only: both handlers it hands requests to are HTTP/1.1 servers. */
const ALPN_PROTOCOLS = ['http/1.1'];

/** A client that has not finished its handshake by then is dropped (the default, 120 s, feeds slow-handshake floods). */
const HANDSHAKE_TIMEOUT_MS = 10_000;

/** Same bound as the traffic listener's: how long a shutdown waits for in-flight requests before cutting them. */
const SHUTDOWN_DRAIN_MS = 10_000;

/** Rotated certificates (a Kubernetes Secret updated by cert-manager, a renewed dev certificate) are picked up this often. */
const CREDENTIALS_RELOAD_INTERVAL_MS = 60_000;

/**
 * Forwarding headers a client sends are its own claims: the API trusts X-Forwarded-For for its client address
 * (rate limits of unauthenticated routes, logs) and the traffic handler appends to it. On this listener the client
 * connects directly, so its address is the socket's; both handlers read it from there once these are gone.
 */
const CLIENT_FORWARDING_HEADERS = ['forwarded', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-port', 'x-forwarded-proto', 'x-real-ip'];

function stripClientForwardingHeaders(req: IncomingMessage): void {
  for (const header of CLIENT_FORWARDING_HEADERS) delete req.headers[header];
}

/** Ends a handshake for a name nothing here serves; counted where it is raised, not again as a handshake error. */
class UnknownServerNameError extends Error {}

function refusalBody(refusal: EdgeRefusal): string {
  return JSON.stringify({ code: refusal.status, message: refusal.message });
}

/**
 * One TLS listener (TLS_PORT) for everything an SDK configured with E2B_DOMAIN alone reaches: `api.{KILN_DOMAIN}` is
 * the REST API and `{port}-{sandboxId}.{KILN_DOMAIN}` the sandbox-traffic handler, WebSocket upgrades included. It
 * terminates TLS and hands each request, on its own socket, to the same in-process handler the plain listeners use
 * (Fastify's router, the traffic server's request/upgrade handlers), so nothing is re-implemented or buffered and
 * both see the real client address. Names under the domain that nothing serves, and names outside it, are refused
 * during the handshake; every request must carry the Host its connection was opened for (SNI).
 */
@Injectable()
export class TlsEdgeListener implements BeforeApplicationShutdown {
  private readonly logger = new Logger('tls-edge');
  private server?: HttpsServer;
  private secureContext?: SecureContext;
  private reloadTimer?: NodeJS.Timeout;
  /** Sockets handed over by an upgrade: the HTTP server no longer tracks them, so its shutdown cannot close them. */
  private readonly upgradedSockets = new Set<Duplex>();
  private readonly requests;
  private readonly handshakeFailures;

  constructor(
    private readonly env: GatewayEnv,
    private readonly adapterHost: HttpAdapterHost,
    private readonly traffic: SandboxTrafficProxy,
    metrics: MetricsRegistry,
    @Inject(TLS_EDGE_CREDENTIALS) private credentials: TlsEdgeCredentials | undefined,
  ) {
    this.requests = metrics.counter('kiln_gateway_tls_requests_total', 'Requests on the TLS listener by where they went', ['outcome']);
    this.handshakeFailures = metrics.counter('kiln_gateway_tls_handshake_failures_total', 'TLS handshakes refused or failed', ['reason']);
  }

  /** The bound port, or undefined while the listener is off. */
  get port(): number | undefined {
    const address = this.server?.address();
    return typeof address === 'object' && address ? address.port : undefined;
  }

  /**
   * Starts listening on TLS_PORT when a certificate is configured. Called once the API listens, so no request
   * reaches Fastify before its routes are ready. Without `host` it listens on every address, IPv6 included: dev
   * names under `.localhost` resolve to ::1 as well as 127.0.0.1.
   */
  async listen(host?: string): Promise<void> {
    const credentials = this.credentials;
    if (!credentials || this.server) return;
    const api = this.adapterHost.httpAdapter.getInstance<FastifyInstance>();
    const trafficServer = this.traffic.httpServer;
    this.secureContext = createSecureContext({ cert: credentials.cert, key: credentials.key });
    const server = createServer({
      cert: credentials.cert,
      key: credentials.key,
      ALPNProtocols: ALPN_PROTOCOLS,
      handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
      SNICallback: (servername, done) => {
        if (edgeRouteOf(servername, this.env.KILN_DOMAIN)) return done(null, this.secureContext);
        this.handshakeFailures.inc({ reason: 'unknown_server_name' });
        done(new UnknownServerNameError(`no service is named ${servername}`));
      },
    });
    // Like the plain traffic listener's (and the API's): besides, a TLS handshake is worth reusing.
    server.keepAliveTimeout = IDLE_KEEP_ALIVE_MS;
    server.on('request', (req: IncomingMessage, res: ServerResponse) => this.onRequest(req, res, api, trafficServer));
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head, api, trafficServer));
    server.on('tlsClientError', (error: Error & { code?: string }) => {
      // Scanners and clients that do not trust the certificate land here all the time: count them, log quietly.
      if (!(error instanceof UnknownServerNameError)) this.handshakeFailures.inc({ reason: 'handshake_error' });
      this.logger.debug(`TLS handshake failed: ${error.message}`);
    });
    server.listen(this.env.TLS_PORT, host);
    await Promise.race([once(server, 'listening'), once(server, 'error').then(([error]) => Promise.reject(error))]);
    server.on('error', (error) => this.logger.error(`TLS listener error: ${error.message}`));
    this.server = server;
    this.reloadTimer = setInterval(() => this.reloadCredentials(), CREDENTIALS_RELOAD_INTERVAL_MS).unref();
    this.logger.log(`TLS listening on :${this.port} for api.${this.env.KILN_DOMAIN} and {port}-{sandboxId}.${this.env.KILN_DOMAIN} (${credentials.names})`);
    this.warnIfExpiring(credentials);
  }

  /**
   * Stops accepting before the API and the traffic handler close (they shut down after this hook), lets in-flight
   * requests finish for up to SHUTDOWN_DRAIN_MS, then cuts what is left, upgraded connections included.
   */
  async beforeApplicationShutdown(): Promise<void> {
    clearInterval(this.reloadTimer);
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    const reaper = setInterval(() => server.closeIdleConnections(), 100);
    let timer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([
      closed.then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), SHUTDOWN_DRAIN_MS))),
    ]);
    clearTimeout(timer);
    clearInterval(reaper);
    if (!drained) this.logger.warn(`closing ${this.upgradedSockets.size} upgraded connections and the remaining TLS requests after ${SHUTDOWN_DRAIN_MS} ms`);
    for (const socket of this.upgradedSockets) socket.destroy();
    server.closeAllConnections();
    await closed;
  }

  private onRequest(req: IncomingMessage, res: ServerResponse, api: FastifyInstance, trafficServer: HttpServer): void {
    const decision = edgeRequestRoute({ servername: (req.socket as TLSSocket).servername, url: req.url, headers: req.headers }, this.env.KILN_DOMAIN);
    if ('refusal' in decision) {
      this.requests.inc({ outcome: `refused_${decision.refusal.status}` });
      const body = refusalBody(decision.refusal);
      // Closing after the answer: a misdirected client retries on a connection of its own, and its body is not read.
      res.writeHead(decision.refusal.status, {
        'content-type': 'application/json; charset=utf-8',
        'content-length': Buffer.byteLength(body),
        connection: 'close',
      });
      res.end(body);
      return;
    }
    stripClientForwardingHeaders(req);
    this.requests.inc({ outcome: decision.route.kind });
    if (decision.route.kind === 'api') api.routing(req, res);
    else trafficServer.emit('request', req, res);
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, api: FastifyInstance, trafficServer: HttpServer): void {
    socket.on('error', () => socket.destroy());
    const decision = edgeRequestRoute({ servername: (socket as TLSSocket).servername, url: req.url, headers: req.headers }, this.env.KILN_DOMAIN);
    if ('refusal' in decision) return this.refuseUpgrade(socket, decision.refusal);
    const target = decision.route.kind === 'api' ? api.server : trafficServer;
    // The API serves no upgrades; with no listener to take the socket, Node would only drop it without an answer.
    if (target.listenerCount('upgrade') === 0) return this.refuseUpgrade(socket, { status: 400, message: 'no protocol upgrades are served on this host' });
    stripClientForwardingHeaders(req);
    this.requests.inc({ outcome: decision.route.kind });
    this.upgradedSockets.add(socket);
    socket.once('close', () => this.upgradedSockets.delete(socket));
    target.emit('upgrade', req, socket, head);
  }

  private refuseUpgrade(socket: Duplex, refusal: EdgeRefusal): void {
    this.requests.inc({ outcome: `refused_${refusal.status}` });
    const body = refusalBody(refusal);
    socket.end(
      `HTTP/1.1 ${refusal.status} ${STATUS_CODES[refusal.status] ?? 'Error'}\r\n` +
        `Content-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }

  /**
   * Re-reads TLS_CERT_FILE and TLS_KEY_FILE (every CREDENTIALS_RELOAD_INTERVAL_MS) and swaps a rotated pair in for
   * new handshakes; a broken one is reported and the current one kept.
   */
  reloadCredentials(): void {
    const current = this.credentials;
    const server = this.server;
    if (!current || !server) return;
    let next: TlsEdgeCredentials | undefined;
    try {
      next = readTlsEdgeCredentials(this.env);
    } catch (error) {
      this.logger.error(`keeping the current TLS certificate: ${error instanceof Error ? error.message : String(error)}`);
      return;
    }
    if (!next || (next.cert.equals(current.cert) && next.key.equals(current.key))) return;
    server.setSecureContext({ cert: next.cert, key: next.key });
    this.secureContext = createSecureContext({ cert: next.cert, key: next.key });
    this.credentials = next;
    this.logger.log(`TLS certificate reloaded (${next.names}, valid until ${next.notAfter.toISOString()})`);
    this.warnIfExpiring(next);
  }

  private warnIfExpiring(credentials: TlsEdgeCredentials): void {
    const daysLeft = Math.floor((credentials.notAfter.getTime() - Date.now()) / 86_400_000);
    if (daysLeft < 14) this.logger.warn(`the TLS certificate ${daysLeft < 0 ? 'has expired' : `expires in ${daysLeft} days`} (${credentials.notAfter.toISOString()})`);
  }
}
