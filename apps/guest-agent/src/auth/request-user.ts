import type { AgentState } from '../runtime/agent-state';
import type { SystemUser, SystemUserDirectory } from '../users/system-users';

/**
 * The SDK names the acting user in `Authorization: Basic base64("<user>:")` (password empty); without the header the
 * sandbox's default user applies. Throws UnknownUserError for a name that is not a local account.
 */
export function userFromAuthorization(
  authorization: string | null | undefined,
  state: AgentState,
  users: SystemUserDirectory,
): SystemUser {
  return users.lookup(usernameFromAuthorization(authorization) ?? state.defaultUser);
}

export function usernameFromAuthorization(authorization: string | null | undefined): string | undefined {
  if (!authorization) return undefined;
  const match = /^Basic\s+(\S+)$/i.exec(authorization.trim());
  if (!match) return undefined;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  const name = colon === -1 ? decoded : decoded.slice(0, colon);
  return name || undefined;
}
