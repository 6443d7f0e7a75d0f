import { tokensEqual } from '../auth/access-token';
import type { AgentState } from '../runtime/agent-state';
import type { ClockSync } from '../runtime/clock-sync';
import { HttpError } from './http-io';

interface InitBody {
  accessToken?: unknown;
  envVars?: unknown;
  defaultUser?: unknown;
  defaultWorkdir?: unknown;
  timestamp?: unknown;
}

/**
 * POST /init: the host hands the sandbox its token, env vars, default user/workdir and the current time, on first
 * boot and again after every snapshot restore. Applying the same body twice leaves the same state (idempotent).
 * Once a token is set, only a caller that knows it (header or same token in the body) may re-initialise.
 */
export async function applyInit(
  body: unknown,
  headerToken: string | undefined,
  state: AgentState,
  clock: ClockSync,
): Promise<void> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new HttpError(400, 'init body must be a JSON object');
  }
  const init = body as InitBody;
  const current = state.accessTokenValue;
  if (current !== undefined) {
    const knowsToken =
      tokensEqual(current, headerToken) || (typeof init.accessToken === 'string' && tokensEqual(current, init.accessToken));
    if (!knowsToken) throw new HttpError(401, 'invalid access token');
  }
  if (init.accessToken !== undefined && typeof init.accessToken !== 'string') {
    throw new HttpError(400, 'accessToken must be a string');
  }
  if (init.envVars !== undefined) {
    if (typeof init.envVars !== 'object' || init.envVars === null || Array.isArray(init.envVars)) {
      throw new HttpError(400, 'envVars must be an object of strings');
    }
    for (const [key, value] of Object.entries(init.envVars)) {
      if (typeof value !== 'string' || key === '' || key.includes('=') || key.includes('\0')) {
        throw new HttpError(400, `invalid env var '${key}'`);
      }
    }
  }
  for (const field of ['defaultUser', 'defaultWorkdir', 'timestamp'] as const) {
    if (init[field] !== undefined && typeof init[field] !== 'string') throw new HttpError(400, `${field} must be a string`);
  }
  let hostTimeMs: number | undefined;
  if (typeof init.timestamp === 'string' && init.timestamp !== '') {
    hostTimeMs = Date.parse(init.timestamp);
    if (Number.isNaN(hostTimeMs)) throw new HttpError(400, 'timestamp must be RFC 3339');
  }

  if (typeof init.accessToken === 'string') state.setAccessToken(init.accessToken);
  if (init.envVars) for (const [k, v] of Object.entries(init.envVars as Record<string, string>)) state.envVars.set(k, v);
  if (typeof init.defaultUser === 'string' && init.defaultUser !== '') state.defaultUser = init.defaultUser;
  if (typeof init.defaultWorkdir === 'string' && init.defaultWorkdir !== '') state.defaultWorkdir = init.defaultWorkdir;
  if (hostTimeMs !== undefined) {
    await clock.syncTo(hostTimeMs).catch((err: Error) => {
      throw new HttpError(500, `failed to set the clock: ${err.message}`);
    });
  }
}
