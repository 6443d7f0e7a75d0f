import { createServer as createHttp1Server, type Server as Http1Server } from 'node:http';
import { createServer as createH2cServer, type Http2Server } from 'node:http2';
import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { AgentRequest, AgentResponse } from '../http/http-io';

/** The first bytes of every HTTP/2 prior-knowledge (h2c) connection. */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
const SNIFF_TIMEOUT_MS = 30_000;

/**
 * One TCP port serving both HTTP/1.1 (the SDK's fetch-based transport) and cleartext HTTP/2 (Connect/gRPC clients
 * with prior knowledge). Each connection's first bytes decide which server gets it; the bytes are put back so the
 * chosen server parses the connection from its start.
 */
export class AgentServer {
  private readonly tcp: Server;
  private readonly http1: Http1Server;
  private readonly h2c: Http2Server;
  private readonly sockets = new Set<Socket>();

  constructor(handler: (req: AgentRequest, res: AgentResponse) => void) {
    this.http1 = createHttp1Server({ keepAliveTimeout: 65_000, requestTimeout: 0 }, handler);
    // Node hands CONNECT to a 'connect' listener and, with none, drops the connection unanswered: refuse it in words.
    this.http1.on('connect', (_req, socket: Duplex) => refuseConnectMethod(socket));
    this.h2c = createH2cServer({}, handler);
    this.tcp = createTcpServer((socket) => this.dispatch(socket));
  }

  listen(port: number, host?: string): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.tcp.once('error', reject);
      this.tcp.listen(port, host, () => {
        this.tcp.off('error', reject);
        resolve(this.tcp.address() as AddressInfo);
      });
    });
  }

  close(): void {
    this.tcp.close();
    for (const socket of this.sockets) socket.destroy();
  }

  private dispatch(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    socket.setNoDelay(true);
    const timer = setTimeout(() => socket.destroy(), SNIFF_TIMEOUT_MS);
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const compared = Math.min(head.length, H2_PREFACE.length);
      const isH2 = head.subarray(0, compared).equals(H2_PREFACE.subarray(0, compared));
      if (isH2 && head.length < H2_PREFACE.length) return; // Need more bytes to be sure.
      clearTimeout(timer);
      socket.off('data', onData);
      socket.pause();
      if (isH2) {
        // The HTTP/2 session reads the socket's handle directly and would miss bytes put back with unshift().
        this.h2c.emit('connection', new ReplayingSocket(socket, head));
      } else {
        socket.unshift(head);
        this.http1.emit('connection', socket);
      }
      socket.resume();
    };
    socket.on('data', onData);
  }
}

/** The answer to an HTTP CONNECT (a forward-proxy tunnel request): envd's `{code, message}`, then the connection ends. */
export function refuseConnectMethod(socket: Duplex): void {
  const body = JSON.stringify({ code: 405, message: 'method CONNECT is not allowed' });
  socket.on('error', () => socket.destroy());
  socket.end(`HTTP/1.1 405 Method Not Allowed\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

/** A socket stand-in that yields the already-read bytes first, then everything the real socket receives. */
class ReplayingSocket extends Duplex {
  constructor(
    private readonly socket: Socket,
    head: Buffer,
  ) {
    super();
    this.push(head);
    socket.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) socket.pause();
    });
    socket.on('end', () => this.push(null));
    socket.on('error', (err) => this.destroy(err));
    socket.on('close', () => this.destroy());
  }

  get remoteAddress(): string | undefined {
    return this.socket.remoteAddress;
  }

  get remotePort(): number | undefined {
    return this.socket.remotePort;
  }

  setTimeout(ms: number, callback?: () => void): this {
    this.socket.setTimeout(ms, callback);
    return this;
  }

  setNoDelay(noDelay?: boolean): this {
    this.socket.setNoDelay(noDelay);
    return this;
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.socket.write(chunk, callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.socket.end(callback);
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.socket.destroy(err ?? undefined);
    callback(err);
  }
}
