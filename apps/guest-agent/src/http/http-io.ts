import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';

export type AgentRequest = IncomingMessage | Http2ServerRequest;
export type AgentResponse = ServerResponse | Http2ServerResponse;

/** An HTTP failure with the status and message envd answers with (`{"code": 404, "message": "..."}`). */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** writeHead for either protocol: the HTTP/1 and HTTP/2 compatibility responses share this signature. */
export function writeHead(res: AgentResponse, status: number, headers: Record<string, string | number>): void {
  (res as ServerResponse).writeHead(status, headers);
}

export function sendJson(res: AgentResponse, status: number, body: unknown): void {
  const payload = JSON.stringify(body);
  if (res.headersSent) {
    res.destroy?.();
    return;
  }
  writeHead(res, status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(payload),
    'cache-control': 'no-store',
  });
  res.end(payload);
}

export function sendError(res: AgentResponse, err: HttpError): void {
  sendJson(res, err.status, { code: err.status, message: err.message });
}

export function sendNoContent(res: AgentResponse): void {
  writeHead(res, 204, { 'cache-control': 'no-store' });
  res.end();
}

/** Reads a small JSON body, refusing anything larger than `limitBytes` rather than buffering it. */
export async function readJsonBody(req: AgentRequest, limitBytes: number): Promise<unknown> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > limitBytes) throw new HttpError(413, `request body larger than ${limitBytes} bytes`);
    chunks.push(chunk);
  }
  if (total === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new HttpError(400, 'request body is not valid JSON');
  }
}

export function headerValue(req: AgentRequest, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** Maps an fs error from a file transfer to envd's HTTP status. */
export function fileHttpError(err: unknown, path: string): HttpError {
  if (err instanceof HttpError) return err;
  const code = (err as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOENT':
      return new HttpError(404, `path '${path}' does not exist`);
    case 'EISDIR':
      return new HttpError(400, `path '${path}' is a directory`);
    case 'ENOTDIR':
      return new HttpError(400, `path '${path}' has a parent that is not a directory`);
    case 'EACCES':
    case 'EPERM':
      return new HttpError(403, `permission denied: '${path}'`);
    case 'ENOSPC':
    case 'EDQUOT':
      return new HttpError(507, 'not enough disk space available');
    case 'ENAMETOOLONG':
    case 'EINVAL':
    // Node refuses a path holding a NUL byte before any syscall (no errno).
    case 'ERR_INVALID_ARG_VALUE':
      return new HttpError(400, `invalid path '${path}'`);
    default:
      return new HttpError(500, `error accessing '${path}': ${(err as Error).message}`);
  }
}
