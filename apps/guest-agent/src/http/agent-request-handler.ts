import type { Readable } from 'node:stream';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import { Filesystem } from '@kiln/proto/filesystem';
import { Process } from '@kiln/proto/process';
import { ACCESS_TOKEN_HEADER, rejectSignedFilesUrl, tokensEqual } from '../auth/access-token';
import type { EntryDescriber } from '../filesystem/entry-info';
import type { FileMetadataStore } from '../filesystem/file-metadata';
import type { FilesystemService } from '../filesystem/filesystem-service';
import { createProcessService } from '../process/process-service';
import { withCallerProtocolErrorsAsInvalidArgument } from '../rpc/protocol-errors';
import type { ProcessTable } from '../process/process-table';
import type { AgentState } from '../runtime/agent-state';
import type { ClockSync } from '../runtime/clock-sync';
import type { EntropyReseed } from '../runtime/entropy-reseed';
import type { ResolverConfig } from '../runtime/resolver-config';
import type { OomPolicy } from '../runtime/oom-policy';
import { ResourceMetrics } from '../runtime/resource-metrics';
import type { SystemUserDirectory } from '../users/system-users';
import { FilesRoutes } from './files-routes';
import {
  headerValue,
  HttpError,
  readJsonBody,
  sendError,
  sendJson,
  sendNoContent,
  type AgentRequest,
  type AgentResponse,
} from './http-io';
import { applyInit } from './init-route';

/** Largest single Connect message accepted; bigger input belongs in /files. */
const MAX_RPC_MESSAGE_BYTES = 16 << 20;
const MAX_INIT_BODY_BYTES = 1 << 20;
const RPC_PREFIXES = ['/process.Process/', '/filesystem.Filesystem/'];

export interface AgentServices {
  state: AgentState;
  users: SystemUserDirectory;
  processes: ProcessTable;
  filesystem: FilesystemService;
  entries: EntryDescriber;
  metadata: FileMetadataStore;
  clock: ClockSync;
  entropy: EntropyReseed;
  resolver: ResolverConfig;
  oom: OomPolicy;
}

/**
 * One handler for everything on the port: the access-token gate first, then Connect RPC for the two envd services
 * and plain HTTP for the REST routes. Every failure becomes a response; none may escape to crash the agent.
 */
export function createAgentRequestHandler(services: AgentServices): (req: AgentRequest, res: AgentResponse) => void {
  const { state } = services;
  const rpc = connectNodeAdapter({
    routes: (router) => {
      router.service(Process, createProcessService(services.processes, state, services.users, services.oom));
      router.service(Filesystem, services.filesystem.impl());
      // The adapter reads router.handlers after this callback: wrapped here, every RPC answers malformed framing 400.
      router.handlers.splice(0, router.handlers.length, ...router.handlers.map(withCallerProtocolErrorsAsInvalidArgument));
    },
    readMaxBytes: MAX_RPC_MESSAGE_BYTES,
  });
  const files = new FilesRoutes(state, services.users, services.entries, services.metadata);
  const metrics = new ResourceMetrics();

  const route = async (req: AgentRequest, res: AgentResponse, url: URL): Promise<void> => {
    const method = req.method ?? 'GET';
    const isRpc = RPC_PREFIXES.some((p) => url.pathname.startsWith(p));
    if (url.pathname === '/health' && (method === 'GET' || method === 'HEAD')) return sendNoContent(res);

    const denial = authenticationFailure(req, url, state);
    if (denial) {
      (req as Readable).resume();
      if (isRpc) return sendJson(res, 401, { code: 'unauthenticated', message: denial });
      return sendError(res, new HttpError(401, denial));
    }

    if (isRpc) {
      rpc(req as never, res as never);
      return;
    }
    switch (`${method} ${url.pathname}`) {
      case 'GET /files':
        return files.download(req, res, url.searchParams);
      case 'POST /files':
        return files.upload(req, res, url.searchParams);
      case 'GET /metrics':
        return sendJson(res, 200, await metrics.collect());
      case 'GET /envs':
        return sendJson(res, 200, Object.fromEntries(state.envVars));
      case 'POST /init':
        await applyInit(await readJsonBody(req, MAX_INIT_BODY_BYTES), headerValue(req, ACCESS_TOKEN_HEADER), state, {
          clock: services.clock,
          entropy: services.entropy,
          resolver: services.resolver,
        });
        return sendNoContent(res);
      default:
        (req as Readable).resume();
        throw new HttpError(404, `no route for ${method} ${url.pathname}`);
    }
  };

  return (req, res) => {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://guest-agent');
    } catch {
      return sendError(res, new HttpError(400, 'malformed request URL'));
    }
    route(req, res, url).catch((err: unknown) => {
      (req as Readable).resume();
      const httpError = err instanceof HttpError ? err : new HttpError(500, (err as Error)?.message ?? 'internal error');
      if (res.headersSent) res.destroy?.();
      else sendError(res, httpError);
    });
  };
}

/**
 * Why the request may not proceed, or undefined. Without an access token (before /init) everything is open, as in
 * envd. /files also accepts a URL signed with the token instead of the header.
 */
function authenticationFailure(req: AgentRequest, url: URL, state: AgentState): string | undefined {
  const token = state.accessTokenValue;
  if (token === undefined) return undefined;
  const given = headerValue(req, ACCESS_TOKEN_HEADER);
  if (given !== undefined) return tokensEqual(token, given) ? undefined : 'invalid access token';
  if (url.pathname === '/files' && (req.method === 'GET' || req.method === 'POST')) {
    return rejectSignedFilesUrl(token, req.method, url.searchParams, Math.floor(Date.now() / 1000));
  }
  if (url.pathname === '/init' && req.method === 'POST') return undefined; // Checked against the body's token.
  return 'missing access token (X-Access-Token header)';
}
