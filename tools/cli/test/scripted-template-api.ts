import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http';
import { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';

/** One request the stand-in received, with its JSON body when it had one. */
export interface ReceivedCall {
  method: string;
  path: string;
  apiKey?: string;
  body?: unknown;
}

export interface BuildLog {
  level: 'debug' | 'info' | 'warn' | 'error';
  message: string;
  step?: string;
}

/** How the scripted build ends: the log lines it streams, then ready or error (with E2B's reason). */
export interface BuildScript {
  logs: BuildLog[];
  outcome: { status: 'ready' } | { status: 'error'; message: string; step: string };
}

/**
 * A SCRIPTED STAND-IN for E2B's template routes, not Kiln's gateway: it answers the requests the e2b SDK's
 * Template.build makes (POST /v3/templates, GET /templates/{id}/files/{hash}, the signed-URL PUT, POST
 * /v2/templates/{id}/builds/{buildID}, GET …/status with paged logs) from a script, and records them so a test can
 * check what the CLI sent. It builds nothing.
 */
export class ScriptedTemplateApi {
  readonly calls: ReceivedCall[] = [];
  /** Uploaded archives by files hash: the names of the entries in each tar. */
  readonly uploads = new Map<string, string[]>();
  private server: Server | undefined;
  private statusPolls = 0;
  readonly templateId = 'tplscriptedstandin01';
  readonly buildId = '5d0c3f4e-8a1b-4c2d-9e3f-0a1b2c3d4e5f';

  constructor(
    private readonly script: BuildScript,
    readonly apiKey = 'e2b_0123456789abcdef0123456789abcdef01234567',
  ) {}

  get url(): string {
    return `http://127.0.0.1:${(this.server!.address() as AddressInfo).port}`;
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((error) => this.send(res, 500, { code: 500, message: String(error) }));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
  }

  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server!.close(() => resolve()));
  }

  callsTo(method: string, pattern: RegExp): ReceivedCall[] {
    return this.calls.filter((call) => call.method === method && pattern.test(call.path));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://stand-in');
    const raw = await readBody(req);
    const call: ReceivedCall = { method: req.method ?? '', path: url.pathname, apiKey: req.headers['x-api-key'] as string | undefined };
    if (raw.length && (req.headers['content-type'] ?? '').includes('json')) call.body = JSON.parse(raw.toString('utf8'));
    this.calls.push(call);

    const upload = /^\/upload\/(\w+)$/.exec(url.pathname);
    if (req.method === 'PUT' && upload) {
      // The signed URL carries no API key, as a real one would not.
      this.uploads.set(upload[1], tarEntryNames(raw));
      return this.send(res, 200, {});
    }
    if (call.apiKey !== this.apiKey) return this.send(res, 401, { code: 401, message: 'Invalid API key' });

    if (req.method === 'POST' && url.pathname === '/v3/templates') {
      const { name, tags } = call.body as { name: string; tags?: string[] };
      const [alias, tag] = name.split(':');
      const allTags = [...(tag ? [tag] : ['default']), ...(tags ?? [])];
      return this.send(res, 202, { templateID: this.templateId, buildID: this.buildId, public: false, names: [alias], tags: allTags, aliases: [alias] });
    }
    const files = /^\/templates\/(\w+)\/files\/(\w+)$/.exec(url.pathname);
    if (req.method === 'GET' && files) return this.send(res, 201, { present: false, url: `${this.url}/upload/${files[2]}` });
    if (req.method === 'POST' && url.pathname === `/v2/templates/${this.templateId}/builds/${this.buildId}`) {
      res.writeHead(202, { 'content-length': '0' }).end();
      return;
    }
    if (req.method === 'GET' && url.pathname === `/templates/${this.templateId}/builds/${this.buildId}/status`) {
      // The first poll reports `building` with the first half of the log, later ones the rest and the outcome.
      this.statusPolls++;
      const offset = Number(url.searchParams.get('logsOffset') ?? 0);
      const visible = this.statusPolls === 1 ? this.script.logs.slice(0, Math.ceil(this.script.logs.length / 2)) : this.script.logs;
      const logEntries = visible.slice(offset).map((log) => ({ timestamp: new Date().toISOString(), ...log }));
      const { outcome } = this.script;
      const status = this.statusPolls === 1 ? 'building' : outcome.status;
      return this.send(res, 200, {
        templateID: this.templateId,
        buildID: this.buildId,
        status,
        logs: logEntries.map((entry) => entry.message),
        logEntries,
        ...(status === 'error' && outcome.status === 'error' ? { reason: { message: outcome.message, step: outcome.step, logEntries: [] } } : {}),
      });
    }
    return this.send(res, 404, { code: 404, message: `the stand-in has no route ${req.method} ${url.pathname}` });
  }

  private send(res: ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  }
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** The entry names of a (gzipped) tar archive: 512-byte headers, name in the first 100 bytes. */
function tarEntryNames(archive: Buffer): string[] {
  const tar = archive[0] === 0x1f && archive[1] === 0x8b ? gunzipSync(archive) : archive;
  const names: string[] = [];
  for (let offset = 0; offset + 512 <= tar.length; ) {
    const header = tar.subarray(offset, offset + 512);
    if (header.every((byte) => byte === 0)) break;
    const name = header.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
    const prefix = header.subarray(345, 500).toString('utf8').replace(/\0.*$/s, '');
    const size = parseInt(header.subarray(124, 136).toString('utf8').replace(/\0.*$/s, '').trim() || '0', 8);
    const type = String.fromCharCode(header[156]);
    if (type !== 'x' && type !== 'g') names.push(prefix ? `${prefix}/${name}` : name);
    offset += 512 + Math.ceil(size / 512) * 512;
  }
  return names;
}
