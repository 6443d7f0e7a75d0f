import { SANDBOX_ID_PATTERN } from '@kiln/contracts';
import { ENVD_PORT } from '@kiln/contracts/envd-auth';

/** Headers E2B SDKs send with every envd call; the host agent's proxy routes on the same pair. */
export const SANDBOX_ID_HEADER = 'e2b-sandbox-id';
export const SANDBOX_PORT_HEADER = 'e2b-sandbox-port';
/** Port of the guest agent (envd) inside every sandbox; the default when a request names no port. */
export { ENVD_PORT };

export interface SandboxAddress {
  sandboxId: string;
  port: number;
}

export type AddressResult = { ok: true; address: SandboxAddress } | { ok: false; reason: string } | { ok: false; reason: undefined };

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function parsePort(text: string): number | undefined {
  if (!/^\d{1,5}$/.test(text)) return undefined;
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : undefined;
}

/**
 * Which sandbox and port a request is for: the E2b-Sandbox-Id/-Port headers when
 * present (E2B_SANDBOX_URL clients), otherwise a `{port}-{sandboxId}.{domain}` Host.
 * `reason` is undefined when the request names no sandbox at all.
 */
export function sandboxAddressOf(headers: Record<string, string | string[] | undefined>, domain: string): AddressResult {
  const idHeader = single(headers[SANDBOX_ID_HEADER])?.trim();
  const portHeader = single(headers[SANDBOX_PORT_HEADER])?.trim();
  if (idHeader !== undefined || portHeader !== undefined) {
    if (!idHeader || !SANDBOX_ID_PATTERN.test(idHeader)) return { ok: false, reason: `${SANDBOX_ID_HEADER} must be a sandbox id` };
    const port = portHeader === undefined ? ENVD_PORT : parsePort(portHeader);
    if (port === undefined) return { ok: false, reason: `${SANDBOX_PORT_HEADER} must be a port number (1-65535)` };
    return { ok: true, address: { sandboxId: idHeader, port } };
  }
  const host = single(headers.host)?.trim().toLowerCase().replace(/:\d+$/, '');
  const suffix = `.${domain.toLowerCase()}`;
  if (!host || !host.endsWith(suffix)) return { ok: false, reason: undefined };
  const match = /^(\d{1,5})-([a-z0-9]{1,64})$/.exec(host.slice(0, -suffix.length));
  if (!match) return { ok: false, reason: `host must look like {port}-{sandboxId}${suffix}` };
  const port = parsePort(match[1]);
  if (port === undefined) return { ok: false, reason: 'port in host must be 1-65535' };
  return { ok: true, address: { sandboxId: match[2], port } };
}
