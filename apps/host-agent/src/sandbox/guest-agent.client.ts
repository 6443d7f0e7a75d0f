import { Agent, request } from 'node:http';
import { GUEST_AGENT_PORT } from '../network';

export interface GuestInit {
  accessToken?: string;
  envVars: Record<string, string>;
  /** Host clock: a restored snapshot wakes up with the template's time. */
  timestamp: string;
}

/**
 * Per-attempt limit. Generous on purpose: right after a restore the first request is slow
 * while TCG re-translates the guest's network and agent code, and aborting it only to
 * reconnect pays that cost again (measured: it tripled time-to-agent).
 */
const INIT_ATTEMPT_TIMEOUT_MS = 2_000;
/** Pause after a refused connection (the guest's socket is not back yet). */
const RETRY_INTERVAL_MS = 5;

function post(agent: Agent, host: string, path: string, body: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host, port: GUEST_AGENT_PORT, path, method: 'POST', agent, timeout: timeoutMs, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer from guest agent at ${host} within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * Sends the restored guest's agent its sandbox settings (access token, env vars, clock),
 * retrying until it answers. /init doubles as the readiness check: one round trip fewer
 * on the create path than polling /health first.
 */
export async function initGuestAgent(host: string, agent: Agent, init: GuestInit, deadlineMs: number): Promise<{ attempts: number }> {
  const body = JSON.stringify(init);
  const deadline = Date.now() + deadlineMs;
  let attempts = 0;
  let lastError: unknown;
  while (Date.now() < deadline) {
    attempts++;
    try {
      const status = await post(agent, host, '/init', body, Math.min(INIT_ATTEMPT_TIMEOUT_MS, Math.max(100, deadline - Date.now())));
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
