import { Agent, request } from 'node:http';
import type { GuestInitBody } from '@kiln/contracts/guest-init';
import { GUEST_AGENT_PORT } from '../network';

/**
 * Until the guest's network is back, SYNs go unanswered: give up on a connection attempt
 * quickly and try again. Once connected, wait as long as the deadline allows: right after
 * a restore the first request is slow while TCG re-translates the guest's network and agent
 * code, and aborting it only repeats that work (with many guests restoring at once, a short
 * per-request timeout turns into a livelock where no request ever completes).
 */
const CONNECT_ATTEMPT_TIMEOUT_MS = 1_000;
/** Pause after a refused connection (the guest's socket is not back yet). */
const RETRY_INTERVAL_MS = 5;

interface PostOptions {
  port: number;
  responseTimeoutMs: number;
  signal?: AbortSignal;
  accessToken?: string;
}

function post(agent: Agent, host: string, path: string, body: string, options: PostOptions): Promise<number> {
  const { port, responseTimeoutMs, signal, accessToken } = options;
  const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
  if (accessToken) headers['x-access-token'] = accessToken;
  return new Promise((resolve, reject) => {
    const req = request(
      { host, port, path, method: 'POST', agent, signal, headers },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    const connectTimer = setTimeout(() => req.destroy(new Error(`no connection to guest agent at ${host} within ${CONNECT_ATTEMPT_TIMEOUT_MS} ms`)), CONNECT_ATTEMPT_TIMEOUT_MS);
    const responseTimer = setTimeout(() => req.destroy(new Error(`no answer from guest agent at ${host} within ${responseTimeoutMs} ms`)), responseTimeoutMs);
    req.on('socket', (socket) => {
      // A reused keep-alive socket is already connected.
      if (!socket.connecting) clearTimeout(connectTimer);
      else socket.once('connect', () => clearTimeout(connectTimer));
    });
    req.on('close', () => {
      clearTimeout(connectTimer);
      clearTimeout(responseTimer);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * Sends the restored guest's agent its sandbox settings (access token, env vars, clock),
 * retrying until it answers. /init doubles as the readiness check: one round trip fewer
 * on the create path than polling /health first.
 */
export async function initGuestAgent(
  host: string,
  agent: Agent,
  init: GuestInitBody,
  deadlineMs: number,
  options: {
    signal?: AbortSignal;
    port?: number;
    /** The token the guest already holds (re-initialising a guest that has one: after a resume, or a warm-up). */
    currentAccessToken?: string;
  } = {},
): Promise<{ attempts: number }> {
  const { signal, port = GUEST_AGENT_PORT, currentAccessToken } = options;
  const body = JSON.stringify(init);
  const deadline = Date.now() + deadlineMs;
  let attempts = 0;
  let lastError: unknown;
  while (Date.now() < deadline) {
    signal?.throwIfAborted();
    attempts++;
    try {
      const status = await post(agent, host, '/init', body, {
        port,
        responseTimeoutMs: Math.max(100, deadline - Date.now()),
        signal,
        accessToken: currentAccessToken,
      });
      if (status >= 200 && status < 300) return { attempts };
      lastError = new Error(`guest agent answered /init with HTTP ${status}`);
      if (status >= 400 && status < 500) break;
    } catch (error) {
      lastError = error;
    }
    await new Promise((resolve) => setTimeout(resolve, RETRY_INTERVAL_MS));
  }
  throw new Error(`guest agent did not accept /init: ${lastError instanceof Error ? lastError.message : String(lastError)}`);
}
