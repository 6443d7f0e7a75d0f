import { connect } from 'node:net';

/**
 * One request exactly as it goes on the wire. Written by hand over a socket rather than with fetch or http.request:
 * those refuse (or repair) the malformed methods, targets and headers the fuzz is about.
 */
export interface RawRequest {
  /** Which surface the request is for; counted separately. */
  surface: string;
  /** The generator's name for this kind of request, for the report. */
  kind: string;
  method: string;
  /** The request-target as sent (may hold unencoded unicode, %00, spaces...). */
  target: string;
  headers: Array<[string, string]>;
  body?: Buffer;
  /**
   * Set for a request whose answer is an E2B contract at or above 500 (a route Kiln does not implement: 501; a
   * sandbox id that names no sandbox on the traffic listener: 502); checked exactly, and counted apart.
   */
  documented5xx?: 'not-supported' | 'sandbox-not-found';
}

export interface RawResponse {
  /** 0 when no status line arrived. */
  status: number;
  head: string;
  /** The first bytes of the body (enough to print a failure). */
  body: string;
  /** Why no complete answer arrived: timeout, reset, malformed status line. */
  error?: string;
}

const MAX_KEPT_BODY = 4096;

/** Renders a request for a failure report: the request line, headers and the start of the body. */
export function describeRequest(request: RawRequest): string {
  const headers = request.headers.map(([k, v]) => `${k}: ${clip(v, 200)}`).join(' | ');
  const body = request.body ? `${request.body.length} B ${JSON.stringify(clip(request.body.toString('latin1'), 300))}` : 'no body';
  return `[${request.surface}/${request.kind}] ${request.method} ${clip(JSON.stringify(request.target), 300)} {${headers}} ${body}`;
}

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…(${text.length})` : text;
}

/**
 * Sends one request on a fresh connection (`Connection: close`) and reads the answer: the status line, headers and
 * up to 4 KiB of body. A streaming answer (a Connect server stream that started) is read for `streamGraceMs` after its
 * head, then cut: its status is what counts.
 */
export function sendRaw(port: number, request: RawRequest, options: { timeoutMs?: number; streamGraceMs?: number } = {}): Promise<RawResponse> {
  const { timeoutMs = 20_000, streamGraceMs = 1_000 } = options;
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    let received = 0;
    let settled = false;
    let graceTimer: NodeJS.Timeout | undefined;
    const finish = (error?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      clearTimeout(graceTimer);
      socket.destroy();
      resolve(parse(Buffer.concat(chunks), error));
    };
    const deadline = setTimeout(() => finish('timeout'), timeoutMs);
    socket.on('data', (chunk: Buffer) => {
      if (received < 64 * 1024) chunks.push(chunk);
      received += chunk.length;
      if (!graceTimer && Buffer.concat(chunks).includes('\r\n\r\n')) graceTimer = setTimeout(() => finish(), streamGraceMs);
    });
    socket.on('end', () => finish());
    socket.on('close', () => finish());
    socket.on('error', (error: NodeJS.ErrnoException) => finish(error.code ?? error.message));
    socket.on('connect', () => {
      const body = request.body ?? Buffer.alloc(0);
      const lines = [`${request.method} ${request.target} HTTP/1.1`];
      for (const [name, value] of request.headers) lines.push(`${name}: ${value}`);
      if (!request.headers.some(([name]) => name.toLowerCase() === 'content-length')) lines.push(`Content-Length: ${body.length}`);
      lines.push('Connection: close', '', '');
      socket.write(Buffer.concat([Buffer.from(lines.join('\r\n'), 'utf8'), body]));
    });
  });
}

function parse(raw: Buffer, error?: string): RawResponse {
  const text = raw.toString('utf8');
  const headEnd = text.indexOf('\r\n\r\n');
  const head = headEnd >= 0 ? text.slice(0, headEnd) : text;
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(head);
  const status = match ? Number(match[1]) : 0;
  return {
    status,
    head,
    body: headEnd >= 0 ? text.slice(headEnd + 4, headEnd + 4 + MAX_KEPT_BODY) : '',
    ...(status === 0 ? { error: error ?? (raw.length ? 'malformed status line' : 'no answer') } : {}),
  };
}
