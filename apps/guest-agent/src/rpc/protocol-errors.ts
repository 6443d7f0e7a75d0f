import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import { createAsyncIterable, type UniversalHandler, type UniversalServerResponse } from '@connectrpc/connect/protocol';

/**
 * Request-side protocol failures connect-es reports as `internal` (a protobuf body that does not decode, a compressed
 * envelope with no encoding, a truncated gzip body) or `unimplemented` (an unknown Content-Encoding, a unary call with no message or two):
 * each is the caller's malformed input. envd (connect-go) answers these `invalid_argument`, and so must we: a 500 says
 * the agent is broken, and a client would retry it. Anything else `internal` is left alone (a real bug).
 */
const CALLER_PROTOCOL_ERRORS = [
  /^parse binary: /,
  /^received compressed envelope, but do not know how to decompress$/,
  /^invalid envelope, already compressed$/,
  /^unknown compression "/,
  /^protocol error: (missing|received extra) input message for /,
  /^received parsed JSON request body, but content-type indicates binary format$/,
  // connect-node's zlib wrapper: a truncated gzip/br request body (Z_BUF_ERROR) is `internal` there.
  /^decompression failed$/,
];
const REMAPPED_CODES = new Set(['internal', 'unimplemented']);
/** Connect's end-of-stream envelope flag. */
const END_STREAM_FLAG = 0b10;

interface ConnectErrorJson {
  code?: unknown;
  message?: unknown;
}

function isCallerProtocolError(error: ConnectErrorJson | undefined): error is { code: string; message: string } {
  return (
    typeof error?.code === 'string' &&
    REMAPPED_CODES.has(error.code) &&
    typeof error.message === 'string' &&
    CALLER_PROTOCOL_ERRORS.some((pattern) => pattern.test(error.message as string))
  );
}

function parseJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    return undefined;
  }
}

/** A unary error body `{code, message}` of a caller protocol error, re-coded; undefined when it is something else. */
export function remapUnaryError(status: number, body: Uint8Array): { status: number; body: Uint8Array } | undefined {
  if (status < 500) return undefined;
  const error = parseJson(body) as ConnectErrorJson | undefined;
  if (!isCallerProtocolError(error)) return undefined;
  return { status: 400, body: Buffer.from(JSON.stringify({ ...error, code: 'invalid_argument' })) };
}

/** A streaming end envelope `{error: {code, message}}` of a caller protocol error, re-coded; undefined otherwise. */
export function remapEndStreamEnvelope(chunk: Uint8Array): Uint8Array | undefined {
  if (chunk.length < 5 || (chunk[0] & END_STREAM_FLAG) === 0) return undefined;
  const length = Buffer.from(chunk).readUInt32BE(1);
  if (chunk.length !== 5 + length) return undefined;
  const end = parseJson(chunk.subarray(5)) as { error?: ConnectErrorJson } | undefined;
  if (!isCallerProtocolError(end?.error)) return undefined;
  const payload = Buffer.from(JSON.stringify({ ...end, error: { ...end!.error, code: 'invalid_argument' } }));
  const head = Buffer.alloc(5);
  head.writeUInt8(chunk[0], 0);
  head.writeUInt32BE(payload.length, 1);
  return Buffer.concat([head, payload]);
}

async function* remapStream(body: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
  for await (const chunk of body) yield remapEndStreamEnvelope(chunk) ?? chunk;
}

/** A unary error body as sent (connect-es compresses it when the caller accepts gzip or br); undefined if unreadable. */
function decoded(body: Buffer, encoding: string | null | undefined): Buffer | undefined {
  try {
    if (!encoding || encoding === 'identity') return body;
    if (encoding === 'gzip') return gunzipSync(body);
    if (encoding === 'br') return brotliDecompressSync(body);
  } catch {
    // not what it says it is: leave the response alone
  }
  return undefined;
}

async function remapResponse(response: UniversalServerResponse): Promise<UniversalServerResponse> {
  const { body, header } = response;
  if (!body) return response;
  const contentType = header?.get('content-type') ?? '';
  if (response.status >= 500 && contentType.startsWith('application/json')) {
    // A unary error: one small JSON document, read whole.
    const chunks: Uint8Array[] = [];
    for await (const chunk of body) chunks.push(chunk);
    const sent = Buffer.concat(chunks);
    const plain = decoded(sent, header?.get('content-encoding'));
    const remapped = plain && remapUnaryError(response.status, plain);
    if (!remapped) return { ...response, body: createAsyncIterable([sent]) };
    header?.delete('content-encoding');
    header?.set('content-length', String(remapped.body.byteLength));
    return { ...response, status: remapped.status, body: createAsyncIterable([remapped.body]) };
  }
  if (response.status === 200 && contentType.startsWith('application/connect+')) return { ...response, body: remapStream(body) };
  return response;
}

/** Wraps a Connect handler so caller protocol errors answer `invalid_argument` (see CALLER_PROTOCOL_ERRORS). */
export function withCallerProtocolErrorsAsInvalidArgument(handler: UniversalHandler): UniversalHandler {
  const wrapped = async (request: Parameters<UniversalHandler>[0]) => remapResponse(await handler(request));
  return Object.assign(wrapped, handler);
}
