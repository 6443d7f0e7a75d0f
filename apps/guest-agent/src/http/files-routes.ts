import { createReadStream, createWriteStream } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { chown, stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';
import busboy from 'busboy';
import { assertAccess, assertCanChangeEntriesOf, assertReachable } from '../filesystem/access-check';
import { ensureDirectoryFor } from '../filesystem/directory-creation';
import { describeEntry, entryJson } from '../filesystem/entry-info';
import { resolveUserPath } from '../filesystem/path-resolution';
import type { AgentState } from '../runtime/agent-state';
import { UnknownUserError, type SystemUser, type SystemUserDirectory } from '../users/system-users';
import {
  fileHttpError,
  headerValue,
  HttpError,
  sendJson,
  writeHead,
  type AgentRequest,
  type AgentResponse,
} from './http-io';

/** At most this many files in one multipart upload; each part is streamed, so this bounds work, not memory. */
const MAX_FILES_PER_UPLOAD = 1000;

/** GET and POST /files: streamed download and upload of file contents as a given user. */
export class FilesRoutes {
  constructor(
    private readonly state: AgentState,
    private readonly users: SystemUserDirectory,
  ) {}

  async download(req: AgentRequest, res: AgentResponse, query: URLSearchParams): Promise<void> {
    const user = this.userFor(query);
    const requested = query.get('path');
    if (!requested) throw new HttpError(400, 'path query parameter is required');
    const path = resolveUserPath(requested, user);
    const encoding = chooseEncoding(headerValue(req, 'accept-encoding'));
    try {
      await assertReachable(user, path);
      const info = await stat(path);
      if (info.isDirectory()) throw new HttpError(400, `path '${path}' is a directory`);
      // Opening a FIFO or device blocks a libuv worker thread until a peer shows up; four such requests would
      // stall every file operation in the agent.
      if (!info.isFile()) throw new HttpError(400, `path '${path}' is not a regular file`);
      await assertAccess(user, path, 'read');
      // Larger reads than the 64 KiB default: fewer syscalls and socket writes per MiB, still bounded memory.
      const source = createReadStream(path, { highWaterMark: 512 * 1024 });
      await new Promise<void>((resolve, reject) => {
        source.once('open', () => resolve());
        source.once('error', reject);
      });
      const headers: Record<string, string | number> = {
        'content-type': 'application/octet-stream',
        'content-disposition': `attachment; filename="${basename(path).replace(/["\\\r\n]/g, '_')}"`,
        'cache-control': 'no-store',
      };
      if (encoding === 'gzip') headers['content-encoding'] = 'gzip';
      else headers['content-length'] = info.size;
      writeHead(res, 200, headers);
      // pipeline respects the client's pace: the file is read only as fast as the socket drains.
      if (encoding === 'gzip') await pipeline(source, createGzip(), res as NodeJS.WritableStream);
      else await pipeline(source, res as NodeJS.WritableStream);
    } catch (err) {
      if (res.headersSent) {
        res.destroy?.();
        return;
      }
      throw fileHttpError(err, path);
    }
  }

  async upload(req: AgentRequest, res: AgentResponse, query: URLSearchParams): Promise<void> {
    const user = this.userFor(query);
    const requested = query.get('path') ?? undefined;
    const contentType = headerValue(req, 'content-type') ?? '';
    const gzipped = /^\s*gzip\s*$/i.test(headerValue(req, 'content-encoding') ?? '');
    const body: Readable = gzipped ? (req as Readable).pipe(createGunzip()) : (req as Readable);
    let written: string[];
    if (/^multipart\/form-data/i.test(contentType)) {
      written = await this.receiveMultipart(req, body, requested, user);
    } else if (/^application\/octet-stream/i.test(contentType) || contentType === '') {
      if (!requested) throw new HttpError(400, 'path query parameter is required for an octet-stream upload');
      const path = resolveUserPath(requested, user);
      await this.writeFile(path, body, user);
      written = [path];
    } else {
      drain(req);
      throw new HttpError(400, `unsupported content type '${contentType}'`);
    }
    const entries = await Promise.all(written.map(async (p) => entryJson(await describeEntry(p, this.users))));
    sendJson(res, 200, entries);
  }

  private async receiveMultipart(
    req: AgentRequest,
    body: Readable,
    requested: string | undefined,
    user: SystemUser,
  ): Promise<string[]> {
    let parser: busboy.Busboy;
    try {
      // preservePath: the SDK names each part by its full destination path.
      parser = busboy({ headers: req.headers as IncomingHttpHeaders, preservePath: true, limits: { files: MAX_FILES_PER_UPLOAD } });
    } catch (err) {
      drain(req);
      throw new HttpError(400, `invalid multipart request: ${(err as Error).message}`);
    }
    const paths: string[] = [];
    const writes: Promise<void>[] = [];
    let failure: unknown;
    parser.on('file', (field, stream, info) => {
      if (failure !== undefined || field !== 'file') {
        stream.resume();
        return;
      }
      const target = requested ?? info.filename;
      if (!target) {
        failure = new HttpError(400, 'a file part needs a filename or the path query parameter');
        stream.resume();
        return;
      }
      const path = resolveUserPath(target, user);
      if (paths.includes(path)) {
        failure = new HttpError(400, `you cannot upload multiple files to the same path '${path}' in one upload request`);
        stream.resume();
        return;
      }
      paths.push(path);
      writes.push(
        this.writeFile(path, stream, user).catch((err) => {
          failure ??= err;
          stream.resume();
        }),
      );
    });
    try {
      await pipeline(body, parser);
    } catch (err) {
      failure ??= new HttpError(400, `invalid multipart request: ${(err as Error).message}`);
    }
    await Promise.all(writes);
    if (failure !== undefined) throw failure instanceof HttpError ? failure : fileHttpError(failure, paths.at(-1) ?? '');
    if (paths.length === 0) throw new HttpError(400, 'no file part in the multipart request');
    return paths;
  }

  /** Streams one file to disk as `user`: parents created for them, the file handed to them afterwards. */
  private async writeFile(path: string, content: Readable, user: SystemUser): Promise<void> {
    try {
      await assertReachable(user, path);
      await ensureDirectoryFor(user, dirname(path));
      const existing = await stat(path).catch(() => undefined);
      if (existing?.isDirectory()) throw new HttpError(400, `path '${path}' is a directory`);
      if (existing && !existing.isFile()) throw new HttpError(400, `path '${path}' is not a regular file`);
      if (existing) await assertAccess(user, path, 'write');
      else await assertCanChangeEntriesOf(user, dirname(path));
      await pipeline(content, createWriteStream(path, { mode: 0o644 }));
      await chown(path, user.uid, user.gid);
    } catch (err) {
      throw fileHttpError(err, path);
    }
  }

  private userFor(query: URLSearchParams): SystemUser {
    const name = query.get('username') || this.state.defaultUser;
    try {
      return this.users.lookup(name);
    } catch (err) {
      if (err instanceof UnknownUserError) throw new HttpError(401, err.message);
      throw err;
    }
  }
}

function chooseEncoding(acceptEncoding: string | undefined): 'gzip' | 'identity' {
  if (!acceptEncoding) return 'identity';
  for (const part of acceptEncoding.split(',')) {
    const [name, ...params] = part.trim().split(';');
    const q = params.map((p) => /^\s*q=([\d.]+)/.exec(p)?.[1]).find(Boolean);
    if (name.trim().toLowerCase() === 'gzip' && (q === undefined || Number(q) > 0)) return 'gzip';
  }
  return 'identity';
}

/** Consume and discard a body we refuse, so the connection stays usable. */
function drain(req: AgentRequest): void {
  (req as Readable).resume();
}
