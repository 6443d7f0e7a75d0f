import { absent, hostName, INCOMPLETE, type PeekedName } from './peeked-name';

const RECORD_HEADER = 5;
const CONTENT_HANDSHAKE = 22;
const HANDSHAKE_CLIENT_HELLO = 1;
const EXTENSION_SERVER_NAME = 0;
const SERVER_NAME_HOST = 0;
const MAX_RECORD = 16_384;

/**
 * The server name (SNI) of a TLS ClientHello at the start of `bytes`, which may be cut anywhere: a ClientHello
 * may span several TLS records and TCP segments, so the handshake message is reassembled from consecutive
 * handshake records before it is read. Only what RFC 8446/6066 define is accepted; anything else is `absent`.
 */
export function readTlsServerName(bytes: Buffer): PeekedName {
  const parts: Buffer[] = [];
  let collected = 0;
  let offset = 0;
  /** Length of the whole handshake message (header included), once its header has arrived. */
  let needed: number | undefined;
  while (needed === undefined || collected < needed) {
    if (bytes.length - offset < RECORD_HEADER) return partialRecord(bytes, offset);
    const length = bytes.readUInt16BE(offset + 3);
    if (bytes[offset] !== CONTENT_HANDSHAKE || bytes[offset + 1] !== 3) return absent('not a TLS handshake');
    if (length === 0 || length > MAX_RECORD) return absent('bad TLS record length');
    const body = bytes.subarray(offset + RECORD_HEADER, Math.min(offset + RECORD_HEADER + length, bytes.length));
    parts.push(body);
    collected += body.length;
    if (needed === undefined && collected >= 4) {
      const head = Buffer.concat(parts);
      if (head[0] !== HANDSHAKE_CLIENT_HELLO) return absent('first handshake message is not a ClientHello');
      needed = 4 + head.readUIntBE(1, 3);
    }
    if (body.length < length) return needed !== undefined && collected >= needed ? serverNameOf(Buffer.concat(parts).subarray(4, needed)) : INCOMPLETE;
    offset += RECORD_HEADER + length;
  }
  return serverNameOf(Buffer.concat(parts).subarray(4, needed));
}

/** Before a whole record header is there: a first byte that cannot start a handshake record is decided at once. */
function partialRecord(bytes: Buffer, offset: number): PeekedName {
  if (bytes.length > offset && bytes[offset] !== CONTENT_HANDSHAKE) return absent('not a TLS handshake');
  if (bytes.length > offset + 1 && bytes[offset + 1] !== 3) return absent('not a TLS handshake');
  return INCOMPLETE;
}

/** Walks a complete ClientHello body (after the 4-byte handshake header) to the server_name extension. */
function serverNameOf(hello: Buffer): PeekedName {
  const reader = new Reader(hello);
  try {
    reader.skip(2 + 32); // legacy_version, random
    reader.skip(reader.u8()); // legacy_session_id
    reader.skip(reader.u16()); // cipher_suites
    reader.skip(reader.u8()); // legacy_compression_methods
    if (reader.remaining === 0) return absent('ClientHello has no extensions');
    const extensions = reader.sub(reader.u16());
    while (extensions.remaining > 0) {
      const type = extensions.u16();
      const data = extensions.sub(extensions.u16());
      if (type !== EXTENSION_SERVER_NAME) continue;
      const list = data.sub(data.u16());
      while (list.remaining > 0) {
        const nameType = list.u8();
        const name = list.bytes(list.u16());
        if (nameType === SERVER_NAME_HOST) {
          if (!name.every((c) => c > 0x20 && c < 0x7f)) return absent('server name is not ASCII');
          return hostName(name.toString('ascii'));
        }
      }
      return absent('server_name extension has no host name');
    }
    return absent('ClientHello has no server_name extension');
  } catch (error) {
    if (error instanceof TruncatedError) return absent('malformed ClientHello');
    throw error;
  }
}

class TruncatedError extends Error {}

class Reader {
  private at = 0;
  constructor(private readonly buf: Buffer) {}
  get remaining(): number {
    return this.buf.length - this.at;
  }
  private take(n: number): number {
    if (n > this.remaining) throw new TruncatedError();
    const start = this.at;
    this.at += n;
    return start;
  }
  u8(): number {
    return this.buf[this.take(1)];
  }
  u16(): number {
    return this.buf.readUInt16BE(this.take(2));
  }
  skip(n: number): void {
    this.take(n);
  }
  bytes(n: number): Buffer {
    const start = this.take(n);
    return this.buf.subarray(start, start + n);
  }
  sub(n: number): Reader {
    return new Reader(this.bytes(n));
  }
}
