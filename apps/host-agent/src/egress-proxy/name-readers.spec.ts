import { once } from 'node:events';
import { createServer, type AddressInfo } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { readHttpHost } from './http-host';
import { readTlsServerName } from './tls-server-name';

/** A real ClientHello, as Node's TLS client sends it (captured by a plain TCP server that never answers). */
async function clientHello(servername?: string): Promise<Buffer> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const captured = new Promise<Buffer>((resolve) =>
    server.once('connection', (socket) => {
      const chunks: Buffer[] = [];
      socket.on('data', (d: Buffer) => {
        chunks.push(d);
        const all = Buffer.concat(chunks);
        if (all.length >= 5 && all.length >= 5 + all.readUInt16BE(3)) {
          resolve(all);
          socket.destroy();
        }
      });
    }),
  );
  const client = tlsConnect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, servername, rejectUnauthorized: false });
  client.on('error', () => undefined);
  const hello = await captured;
  client.destroy();
  server.close();
  return hello;
}

/** The same handshake message cut into two TLS records (legal, and what some clients do with large hellos). */
function splitIntoTwoRecords(hello: Buffer, at: number): Buffer {
  const body = hello.subarray(5);
  const record = (part: Buffer) => Buffer.concat([Buffer.from([22, 3, 1, part.length >> 8, part.length & 255]), part]);
  return Buffer.concat([record(body.subarray(0, at)), record(body.subarray(at))]);
}

describe('readTlsServerName', () => {
  it('finds the SNI of a real ClientHello, and says incomplete for every prefix of it', async () => {
    const hello = await clientHello('Api.Example.COM');
    expect(readTlsServerName(hello)).toEqual({ kind: 'found', name: 'api.example.com' });
    for (let cut = 0; cut < hello.length; cut++) {
      expect([cut, readTlsServerName(hello.subarray(0, cut)).kind]).toEqual([cut, 'incomplete']);
    }
    // Bytes after the hello (the client never sends any before the reply, but a reader must not care).
    expect(readTlsServerName(Buffer.concat([hello, Buffer.from('trailing')]))).toEqual({ kind: 'found', name: 'api.example.com' });
  });

  it('reassembles a ClientHello spread over several records', async () => {
    const hello = await clientHello('example.org');
    for (const at of [2, 4, 40, hello.length - 10]) {
      const split = splitIntoTwoRecords(hello, at);
      expect(readTlsServerName(split)).toEqual({ kind: 'found', name: 'example.org' });
      expect(readTlsServerName(split.subarray(0, split.length - 1)).kind).toBe('incomplete');
    }
  });

  it('says absent for a hello without SNI, for IP-literal names and for anything that is not TLS', async () => {
    expect(readTlsServerName(await clientHello())).toMatchObject({ kind: 'absent' });
    expect(readTlsServerName(Buffer.from('GET / HTTP/1.1\r\n'))).toMatchObject({ kind: 'absent' });
    expect(readTlsServerName(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00]))).toMatchObject({ kind: 'absent' });
    // A handshake that is not a ClientHello (ServerHello type 2).
    expect(readTlsServerName(Buffer.from([0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00]))).toMatchObject({ kind: 'absent' });
    // A ClientHello whose length fields run past its end.
    const bogus = Buffer.from([0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0x03, 0x03, 0xff, 0xff]);
    expect(readTlsServerName(bogus)).toMatchObject({ kind: 'absent' });
  });
});

describe('readHttpHost', () => {
  const request = (head: string) => Buffer.from(`${head}\r\n\r\n`, 'latin1');

  it('reads the Host header, without port, lower case, once the header block is complete', () => {
    const bytes = request('GET /path HTTP/1.1\r\nUser-Agent: x\r\nHOST: Example.COM:8080\r\nAccept: */*');
    expect(readHttpHost(bytes)).toEqual({ kind: 'found', name: 'example.com' });
    for (let cut = 0; cut < bytes.length; cut++) expect([cut, readHttpHost(bytes.subarray(0, cut)).kind]).toEqual([cut, 'incomplete']);
    expect(readHttpHost(Buffer.from('POST / HTTP/1.0\nHost: example.com.\n\nbody'))).toEqual({ kind: 'found', name: 'example.com' });
  });

  it('says absent for requests whose name is missing, doubled or not a name, and for non-HTTP bytes', () => {
    expect(readHttpHost(request('GET / HTTP/1.1\r\nAccept: */*'))).toMatchObject({ kind: 'absent' });
    expect(readHttpHost(request('GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: b.example.com'))).toMatchObject({ kind: 'absent' });
    expect(readHttpHost(request('GET / HTTP/1.1\r\nHost: 198.51.100.7'))).toMatchObject({ kind: 'absent' });
    expect(readHttpHost(request('GET / HTTP/1.1\r\nHost: [::1]:80'))).toMatchObject({ kind: 'absent' });
    expect(readHttpHost(request('GET / HTTP/1.1\r\nHost: exa mple.com'))).toMatchObject({ kind: 'absent' });
    expect(readHttpHost(Buffer.from([0x16, 0x03, 0x01]))).toMatchObject({ kind: 'absent' });
    expect(readHttpHost(Buffer.from('SSH-2.0-OpenSSH\r\n'))).toMatchObject({ kind: 'absent' });
  });
});
