import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';

/**
 * The answer to an HTTP CONNECT (a forward-proxy tunnel request), which Node hands to a 'connect' listener and, with
 * none, drops unanswered: neither gateway listener is a forward proxy, so it says so in the API's error shape.
 */
export function refuseConnectMethod(socket: Duplex): void {
  const body = JSON.stringify({ code: 405, message: 'method CONNECT is not allowed: this is not a forward proxy' });
  socket.on('error', () => socket.destroy());
  socket.end(
    `HTTP/1.1 405 ${STATUS_CODES[405]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      `Connection: close\r\n\r\n${body}`,
  );
}
