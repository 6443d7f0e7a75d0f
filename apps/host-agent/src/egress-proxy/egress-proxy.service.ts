import { connect, createServer, type Server, type Socket } from 'node:net';
import { Inject, Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import { NetworkSlotPool, type AppliedEgressPolicy } from '../network';
import { decideEgress, needsName, type Destination, type EgressVerdict } from './egress-decision';
import { EgressProxyListenError } from './egress-proxy.errors';
import { EGRESS_PROXY_OPTIONS, type EgressProxyOptions } from './egress-proxy.options';
import { readHttpHost } from './http-host';
import { OriginalDestinationReader } from './original-destination';
import type { PeekedName } from './peeked-name';
import { readTlsServerName } from './tls-server-name';

/** Which reader finds the name on which original port (the ports the host redirects, PROXIED_PORTS). */
const NAME_READERS: Record<number, (bytes: Buffer) => PeekedName> = { 80: readHttpHost, 443: readTlsServerName };

export interface EgressProxyStats {
  /** Connections by outcome since start (`refuse-source`: not from a leased slot or not redirected). */
  verdicts: Record<EgressVerdict | 'refuse-source', number>;
}

/**
 * Enforces domain rules. The host redirects TCP 80/443 of sandboxes whose policy has domain rules here (see
 * slot-rules); per connection the proxy finds the sandbox by the client address (the slot's hostAddress), reads
 * where the guest was going (SO_ORIGINAL_DST), and, only when the address alone would be denied, reads the name
 * the guest asks for (Host header or TLS SNI) with a bounded read and a deadline. An allowed connection is made
 * from the host to the original address and port (never to a resolved name) and spliced both ways, the bytes
 * read so far first; a refused one is reset.
 */
@Injectable()
export class EgressProxy implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(EgressProxy.name);
  private server: Server | undefined;
  private originalDestination: OriginalDestinationReader | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly counts: EgressProxyStats['verdicts'] = {
    'allow-domain': 0,
    'allow-address': 0,
    'allow-default': 0,
    'refuse-floor': 0,
    'refuse-denied': 0,
    'refuse-source': 0,
  };

  constructor(
    @Inject(EGRESS_PROXY_OPTIONS) private readonly options: EgressProxyOptions,
    private readonly slots: NetworkSlotPool,
  ) {}

  /** Listens before the agent serves creates: a sandbox with domain rules must find its proxy up. */
  async onModuleInit(): Promise<void> {
    this.originalDestination = OriginalDestinationReader.load();
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error) =>
        reject(new EgressProxyListenError(`egress proxy cannot listen on ${this.options.host}:${this.options.port}: ${error.message}`)),
      );
      server.listen({ host: this.options.host, port: this.options.port }, () => resolve());
    });
    server.on('error', (error) => this.logger.error(`egress proxy: ${error.message}`));
    this.server = server;
    this.logger.log(`egress proxy listening on ${this.options.host}:${this.options.port}`);
  }

  async onApplicationShutdown(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const socket of this.sockets) socket.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  stats(): EgressProxyStats {
    return { verdicts: { ...this.counts } };
  }

  private accept(client: Socket): void {
    this.track(client);
    client.on('error', () => client.destroy());
    const remote = unmapped(client.remoteAddress);
    const leased = remote === undefined ? undefined : this.slots.leasedSlotByAddress(remote);
    // Only redirected connections from a leased slot's veth: its traffic reaches the host as hostAddress and is
    // redirected to the host end of its own veth. Anything else (a host process, a spoofed source elsewhere) is not
    // a sandbox's connection.
    if (!leased || unmapped(client.localAddress) !== leased.hostSideIp) return this.refuse(client, 'refuse-source', `from ${remote}`);
    let destination: Destination;
    try {
      destination = this.originalDestination!.of(client);
    } catch (error) {
      return this.refuse(client, 'refuse-source', `from ${remote}: no original destination (${(error as Error).message})`);
    }
    const policy = leased.policy;
    if (!needsName(policy, destination)) return this.decide(client, policy, destination, undefined, Buffer.alloc(0));
    const reader = NAME_READERS[destination.port];
    if (!reader) return this.decide(client, policy, destination, undefined, Buffer.alloc(0));
    this.peek(client, reader, (name, peeked) => this.decide(client, policy, destination, name, peeked));
  }

  /** Reads until the name is known, the bytes run out of bound, or the deadline passes; then pauses the client. */
  private peek(client: Socket, reader: (bytes: Buffer) => PeekedName, done: (name: string | undefined, peeked: Buffer) => void): void {
    const chunks: Buffer[] = [];
    let size = 0;
    let finished = false;
    const finish = (name: string | undefined) => {
      if (finished) return;
      finished = true;
      clearTimeout(deadline);
      client.off('data', onData);
      client.off('end', onEnd);
      client.pause();
      done(name, Buffer.concat(chunks));
    };
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      const result = reader(Buffer.concat(chunks).subarray(0, this.options.peekBytes));
      if (result.kind === 'found') finish(result.name);
      else if (result.kind === 'absent' || size >= this.options.peekBytes) finish(undefined);
    };
    const onEnd = () => finish(undefined);
    const deadline = setTimeout(() => finish(undefined), this.options.peekTimeoutMs);
    deadline.unref();
    client.on('data', onData);
    client.on('end', onEnd);
    client.resume();
  }

  private decide(client: Socket, policy: AppliedEgressPolicy, destination: Destination, name: string | undefined, peeked: Buffer): void {
    if (client.destroyed) return;
    const verdict = decideEgress(policy, this.slots.platformFloor(), destination, name);
    const what = `${client.remoteAddress} -> ${destination.address}:${destination.port}${name ? ` (${name})` : ''}`;
    if (verdict.startsWith('refuse')) return this.refuse(client, verdict, what);
    this.counts[verdict]++;
    this.logger.debug(`${verdict}: ${what}`);
    this.splice(client, destination, peeked);
  }

  private splice(client: Socket, destination: Destination, peeked: Buffer): void {
    const upstream = connect({ host: destination.address, port: destination.port, allowHalfOpen: true });
    this.track(upstream);
    upstream.setTimeout(this.options.connectTimeoutMs, () => upstream.destroy(new Error('connect timeout')));
    upstream.once('connect', () => {
      upstream.setTimeout(0);
      // A guest that sent its request and half-closed while the proxy was reading it has nothing more to pipe.
      if (client.readableEnded) upstream.end(peeked);
      else {
        if (peeked.length > 0) upstream.write(peeked);
        client.pipe(upstream);
      }
      upstream.pipe(client);
      client.resume();
    });
    // Either side failing ends both: the guest sees a reset rather than a connection that hangs.
    upstream.on('error', () => {
      if (!client.destroyed) client.resetAndDestroy();
    });
    client.on('error', () => upstream.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  }

  private refuse(client: Socket, verdict: EgressVerdict | 'refuse-source', what: string): void {
    this.counts[verdict]++;
    this.logger.debug(`${verdict}: ${what}`);
    if (!client.destroyed) client.resetAndDestroy();
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }
}

/** IPv4 addresses as Node reports them on a dual-stack socket (`::ffff:a.b.c.d`). */
function unmapped(address: string | undefined): string | undefined {
  return address?.startsWith('::ffff:') ? address.slice(7) : address;
}
