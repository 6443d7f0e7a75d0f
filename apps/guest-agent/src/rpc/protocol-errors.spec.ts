import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'node:http';
import { gzipSync } from 'node:zlib';
import { Code, ConnectError } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import { Filesystem } from '@kiln/proto/filesystem';
import { remapEndStreamEnvelope, remapUnaryError, withCallerProtocolErrorsAsInvalidArgument } from './protocol-errors';

/** Raw POST: the malformed bodies under test are exactly what a Connect client library would never send. */
function post(port: number, path: string, headers: Record<string, string>, body: Buffer): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: 'POST', headers: { ...headers, 'content-length': String(body.length) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('latin1') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

function envelope(flags: number, message: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(flags, 0);
  head.writeUInt32BE(message.length, 1);
  return Buffer.concat([head, message]);
}

describe('caller protocol errors answer invalid_argument', () => {
  let server: Server;
  let port: number;

  beforeAll(async () => {
    const rpc = connectNodeAdapter({
      routes: (router) => {
        router.service(Filesystem, {
          // The control: an implementation's own internal error stays internal (a real bug must still read as one).
          stat: async (req) => {
            if (req.path === 'boom') throw new ConnectError('broken', Code.Internal);
            return { entry: { name: req.path } };
          },
          async *watchDir() {
            yield { event: { case: 'start', value: {} } };
          },
        });
        router.handlers.splice(0, router.handlers.length, ...router.handlers.map(withCallerProtocolErrorsAsInvalidArgument));
      },
    });
    server = createServer(rpc);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });

  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  const unary = (headers: Record<string, string>, body: Buffer) => post(port, '/filesystem.Filesystem/Stat', { 'connect-protocol-version': '1', ...headers }, body);

  it('a protobuf body that does not decode: 400 invalid_argument (connect-es says 500 internal)', async () => {
    const res = await unary({ 'content-type': 'application/proto' }, Buffer.from([0, 0]));
    expect(res.status).toBe(400);
    expect(JSON.parse(res.text)).toEqual({ code: 'invalid_argument', message: expect.stringMatching(/^parse binary: /) });
  });

  it('an unknown Content-Encoding: 400 invalid_argument (connect-es says 501 unimplemented)', async () => {
    const res = await unary({ 'content-type': 'application/json', 'content-encoding': 'nope' }, Buffer.from('{}'));
    expect(res.status).toBe(400);
    expect(JSON.parse(res.text)).toMatchObject({ code: 'invalid_argument', message: expect.stringMatching(/^unknown compression "nope"/) });
  });

  it('a truncated gzip body: 400 invalid_argument, also when the error body itself would be gzipped', async () => {
    const truncated = gzipSync(Buffer.from('{"path":"/tmp"}')).subarray(0, 12);
    const res = await unary({ 'content-type': 'application/json', 'content-encoding': 'gzip', 'accept-encoding': 'gzip' }, truncated);
    expect(res.status).toBe(400);
    expect(JSON.parse(res.text)).toEqual({ code: 'invalid_argument', message: 'decompression failed' });
  });

  it('a stream whose request envelope does not decode ends with invalid_argument', async () => {
    const res = await post(port, '/filesystem.Filesystem/WatchDir', { 'content-type': 'application/connect+proto' }, envelope(0, Buffer.from([0, 0])));
    expect(res.status).toBe(200);
    expect(res.text).toContain('"code":"invalid_argument"');
    expect(res.text).not.toContain('"code":"internal"');
  });

  it('leaves well-formed calls and real internal errors alone (control)', async () => {
    const ok = await unary({ 'content-type': 'application/json' }, Buffer.from('{"path":"/tmp"}'));
    expect(ok).toEqual({ status: 200, text: '{"entry":{"name":"/tmp"}}' });
    const broken = await unary({ 'content-type': 'application/json' }, Buffer.from('{"path":"boom"}'));
    expect(broken.status).toBe(500);
    expect(JSON.parse(broken.text)).toEqual({ code: 'internal', message: 'broken' });
  });

  it('re-codes only end-of-stream envelopes of caller errors', () => {
    const end = (error: object) => envelope(2, Buffer.from(JSON.stringify({ error })));
    const remapped = remapEndStreamEnvelope(end({ code: 'internal', message: 'parse binary: premature EOF' }));
    expect(JSON.parse(Buffer.from(remapped!.subarray(5)).toString())).toEqual({ error: { code: 'invalid_argument', message: 'parse binary: premature EOF' } });
    expect(remapEndStreamEnvelope(end({ code: 'internal', message: 'disk on fire' }))).toBeUndefined();
    expect(remapEndStreamEnvelope(envelope(0, Buffer.from('{}')))).toBeUndefined();
    expect(remapUnaryError(500, Buffer.from('{"code":"internal","message":"received compressed envelope, but do not know how to decompress"}'))?.status).toBe(400);
    expect(remapUnaryError(400, Buffer.from('{"code":"invalid_argument","message":"x"}'))).toBeUndefined();
  });
});
