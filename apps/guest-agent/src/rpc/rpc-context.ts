import { Code, ConnectError, type HandlerContext } from '@connectrpc/connect';
import { userFromAuthorization } from '../auth/request-user';
import type { AgentState } from '../runtime/agent-state';
import { UnknownUserError, type SystemUser, type SystemUserDirectory } from '../users/system-users';

/** Header the SDK sends on streams, in seconds: how often the server should prove the stream is alive. */
const KEEPALIVE_HEADER = 'keepalive-ping-interval';
const DEFAULT_KEEPALIVE_MS = 30_000;

export function keepaliveIntervalMs(ctx: HandlerContext): number {
  const seconds = Number(ctx.requestHeader.get(KEEPALIVE_HEADER));
  return Number.isFinite(seconds) && seconds >= 1 && seconds <= 3600 ? seconds * 1000 : DEFAULT_KEEPALIVE_MS;
}

export function requestUser(ctx: HandlerContext, state: AgentState, users: SystemUserDirectory): SystemUser {
  try {
    return userFromAuthorization(ctx.requestHeader.get('authorization'), state, users);
  } catch (err) {
    if (err instanceof UnknownUserError) throw new ConnectError(err.message, Code.Unauthenticated);
    throw err;
  }
}
