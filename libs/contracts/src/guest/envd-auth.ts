/**
 * envd's access-token primitives, shared by the guest agent (which enforces them itself) and the edge proxies
 * (gateway traffic listener, host agent proxy), which check the same token before anything reaches a guest.
 * Only `node:crypto`: the guest agent's esbuild bundle takes this file (subpath `@kiln/contracts/envd-auth`)
 * without the rest of the contracts.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

/** Port of the guest agent (envd) inside every sandbox. */
export const ENVD_PORT = 49983;

/** The header every envd call carries the sandbox's access token in. */
export const ACCESS_TOKEN_HEADER = 'x-access-token';

/** Constant-time comparison so the token cannot be guessed byte by byte from response timing. */
export function tokensEqual(expected: string, given: string | undefined): boolean {
  if (given === undefined) return false;
  const a = createHash('sha256').update(expected).digest();
  const b = createHash('sha256').update(given).digest();
  return timingSafeEqual(a, b);
}

export type FileOperation = 'read' | 'write';

/**
 * envd's signed file URL: "v1_" + unpadded base64(sha256("path:operation:user:token[:expiration]")). The path and
 * user are the raw query values (user empty when omitted), exactly as the SDK hashes them.
 */
export function fileSignature(
  path: string,
  operation: FileOperation,
  username: string,
  accessToken: string,
  expiration?: number,
): string {
  const raw =
    expiration === undefined
      ? `${path}:${operation}:${username}:${accessToken}`
      : `${path}:${operation}:${username}:${accessToken}:${expiration}`;
  return 'v1_' + createHash('sha256').update(raw).digest('base64').replace(/=+$/, '');
}

export interface SignatureCheck {
  path: string;
  operation: FileOperation;
  username: string | undefined;
  signature: string | undefined;
  expiration: string | undefined;
  nowSeconds: number;
}

/** Returns why a signed URL is not acceptable, or undefined when it is. */
export function rejectSignature(accessToken: string, check: SignatureCheck): string | undefined {
  if (!check.signature) return 'missing signature query parameter';
  let expiration: number | undefined;
  if (check.expiration !== undefined) {
    if (!/^\d+$/.test(check.expiration)) return 'invalid signature_expiration';
    expiration = Number(check.expiration);
  }
  const expected = fileSignature(check.path, check.operation, check.username ?? '', accessToken, expiration);
  if (!tokensEqual(expected, check.signature)) return 'invalid signature';
  if (expiration !== undefined && expiration < check.nowSeconds) return 'signature is already expired';
  return undefined;
}

/** The signature check for a `GET|POST /files` URL's query (`path`, `username`, `signature`, `signature_expiration`). */
export function rejectSignedFilesUrl(accessToken: string, method: string, query: URLSearchParams, nowSeconds: number): string | undefined {
  return rejectSignature(accessToken, {
    path: query.get('path') ?? '',
    operation: method === 'GET' ? 'read' : 'write',
    username: query.get('username') ?? undefined,
    signature: query.get('signature') ?? undefined,
    expiration: query.get('signature_expiration') ?? undefined,
    nowSeconds,
  });
}
