import { constants as fsConstants, createReadStream } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { open, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';
import busboy from 'busboy';
import { assertAccess, assertCanChangeEntriesOf, assertReachable } from '../filesystem/access-check';
import { ensureDirectoryFor } from '../filesystem/directory-creation';
import { entryJson, type EntryDescriber } from '../filesystem/entry-info';
import {
  InvalidMetadataError,
  metadataFromHeaders,
  MetadataUnsupportedError,
  validateMetadata,
  type FileMetadata,
  type FileMetadataStore,
} from '../filesystem/file-metadata';
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
/** A `file` part without a filename is a form field, which busboy holds in memory whole: it is capped. */
const MAX_FIELD_FILE_BYTES = 16 << 20;

/** GET and POST /files: streamed download and upload of file contents as a given user. */
export class FilesRoutes {
  constructor(
    private readonly state: AgentState,
    private readonly users: SystemUserDirectory,
    private readonly entries: EntryDescriber,
    private readonly metadata: FileMetadataStore,
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
    // Every file of the upload gets the same metadata; an upload without any clears what a file had (envd 0.6.2).
    const metadata = metadataFromHeaders(req.rawHeaders);
    try {
      validateMetadata(metadata);
    } catch (err) {
      if (!(err instanceof InvalidMetadataError)) throw err;
      drain(req);
      throw new HttpError(400, `invalid metadata: ${err.message}`);
    }
    const contentType = headerValue(req, 'content-type') ?? '';
    const gzipped = /^\s*gzip\s*$/i.test(headerValue(req, 'content-encoding') ?? '');
    const body: Readable = gzipped ? (req as Readable).pipe(createGunzip()) : (req as Readable);
    let written: string[];
    if (/^multipart\/form-data/i.test(contentType)) {
      written = await this.receiveMultipart(req, body, requested, user, metadata);
    } else if (/^application\/octet-stream/i.test(contentType) || contentType === '') {
      if (!requested) throw new HttpError(400, 'path query parameter is required for an octet-stream upload');
      const path = resolveUserPath(requested, user);
      await this.writeFile(path, body, user, metadata);
      written = [path];
    } else {
      drain(req);
      throw new HttpError(400, `unsupported content type '${contentType}'`);
    }
    // Described from disk, metadata read back: the answer shows what was stored, not what was asked for.
    const entries = await Promise.all(written.map(async (p) => entryJson(await this.entries.describe(p))));
    sendJson(res, 200, entries);
  }

  private async receiveMultipart(
    req: AgentRequest,
    body: Readable,
    requested: string | undefined,
    user: SystemUser,
    metadata: FileMetadata,
  ): Promise<string[]> {
    let parser: busboy.Busboy;
    try {
      parser = busboy({
        headers: req.headers as IncomingHttpHeaders,
        // The SDK names each part by its full destination path.
        preservePath: true,
        // A `file` part without a filename arrives as a field; latin1 decodes its bytes one to one, so they can be
        // written back exactly.
        defCharset: 'latin1',
        limits: { files: MAX_FILES_PER_UPLOAD, fieldSize: MAX_FIELD_FILE_BYTES + 1 },
      });
    } catch (err) {
      drain(req);
      throw new HttpError(400, `invalid multipart request: ${(err as Error).message}`);
    }
    const paths: string[] = [];
    const writes: Promise<void>[] = [];
    let failure: unknown;
    const accept = (target: string | undefined, content: Readable, skip: () => void) => {
      if (!target) {
        failure = new HttpError(400, 'a file part needs a filename or the path query parameter');
        skip();
        return;
      }
      const path = resolveUserPath(target, user);
      if (paths.includes(path)) {
        failure = new HttpError(400, `you cannot upload multiple files to the same path '${path}' in one upload request`);
        skip();
        return;
      }
      paths.push(path);
      writes.push(
        this.writeFile(path, content, user, metadata).catch((err) => {
          failure ??= err;
          skip();
        }),
      );
    };
    parser.on('file', (field, stream, info) => {
      if (failure !== undefined || field !== 'file') {
        stream.resume();
        return;
      }
      accept(requested ?? info.filename, stream, () => stream.resume());
    });
    // envd writes every part named `file`, with or without a filename (`form.append('file', 'text')` sends none);
    // such a part can only be placed by the path query parameter.
    parser.on('field', (field, value, info) => {
      if (failure !== undefined || field !== 'file') return;
      if (info.valueTruncated || value.length > MAX_FIELD_FILE_BYTES) {
        failure = new HttpError(400, `a file part without a filename may hold at most ${MAX_FIELD_FILE_BYTES} bytes; send it with a filename`);
        return;
      }
      accept(requested, Readable.from([Buffer.from(value, 'latin1')]), () => undefined);
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

  /**
   * Streams one file to disk as `user`, as envd does: missing parents created and handed to the user, the file
   * handed to the user, its metadata replaced by `metadata` (see FileMetadataStore.replace). The metadata is stored
   * before the content is truncated and written, so a file where it cannot be stored is left as it was (or, when
   * this upload would have created it, not created) and the upload fails with that reason.
   */
  private async writeFile(path: string, content: Readable, user: SystemUser, metadata: FileMetadata): Promise<void> {
    let file: FileHandle | undefined;
    try {
      await assertReachable(user, path);
      await ensureDirectoryFor(user, dirname(path));
      const existing = await stat(path).catch(() => undefined);
      if (existing?.isDirectory()) throw new HttpError(400, `path '${path}' is a directory`);
      if (existing && !existing.isFile()) throw new HttpError(400, `path '${path}' is not a regular file`);
      if (existing) await assertAccess(user, path, 'write');
      else await assertCanChangeEntriesOf(user, dirname(path));
      const opened = await openForUpload(path, existing !== undefined);
      file = opened.file;
      try {
        await this.metadata.replace(file.fd, path, metadata);
      } catch (err) {
        if (opened.created) await unlink(path).catch(() => undefined);
        throw err;
      }
      await file.chown(user.uid, user.gid);
      await file.truncate(0);
      const sink = file.createWriteStream();
      file = undefined; // The stream closes it from here on, also on failure.
      await pipeline(content, sink);
    } catch (err) {
      if (err instanceof MetadataUnsupportedError) throw new HttpError(400, err.message);
      throw fileHttpError(err, path);
    } finally {
      await file?.close().catch(() => undefined);
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

/**
 * Opens the upload's target for writing without truncating it yet. A file that did not exist is created here
 * (O_EXCL, so `created` is certain even when another writer races us).
 */
async function openForUpload(path: string, exists: boolean): Promise<{ file: FileHandle; created: boolean }> {
  const { O_WRONLY, O_CREAT, O_EXCL } = fsConstants;
  if (!exists) {
    try {
      return { file: await open(path, O_WRONLY | O_CREAT | O_EXCL, 0o644), created: true };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  return { file: await open(path, O_WRONLY), created: false };
}
