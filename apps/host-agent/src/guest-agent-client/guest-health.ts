import { request } from 'node:http';
import { performance } from 'node:perf_hooks';

export interface GuestAgentHealthOptions {
  /** Overall deadline. */
  timeoutMs: number;
  /** Pause between attempts (after a refused or timed-out request). */
  intervalMs?: number;
  /**
   * Per-request limit. Generous on purpose: right after a restore the first request is slow
   * (TCG retranslates the guest's network and agent code paths), and aborting it only to
   * reconnect repeats that cost. A guest still booting drops SYNs; the kernel retries them.
   */
  requestTimeoutMs?: number;
  /** Gives up early, e.g. when the VM exits. */
  abort?: AbortSignal;
}

/** GET http://<address>:<port>/health once; true on 204 (the envd contract). */
export function guestAgentHealthy(address: string, port: number, requestTimeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ host: address, port, path: '/health', method: 'GET', agent: false, timeout: requestTimeoutMs });
    req.once('response', (res) => {
      res.resume();
      resolve(res.statusCode === 204);
    });
    req.once('timeout', () => req.destroy(new Error('timeout')));
    req.once('error', () => resolve(false));
    req.end();
  });
}

/** Polls the guest agent's /health until it answers 204; returns the time it took, or throws. */
export async function waitForGuestAgent(address: string, port: number, options: GuestAgentHealthOptions): Promise<number> {
  const started = performance.now();
  const deadline = started + options.timeoutMs;
  const interval = options.intervalMs ?? 10;
  const requestTimeout = options.requestTimeoutMs ?? 2_000;
  for (;;) {
    if (options.abort?.aborted) throw new Error(`guest agent wait aborted: ${String(options.abort.reason)}`);
    if (await guestAgentHealthy(address, port, requestTimeout)) return performance.now() - started;
    if (performance.now() > deadline) {
      throw new Error(`guest agent at ${address}:${port} did not answer /health within ${options.timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}
