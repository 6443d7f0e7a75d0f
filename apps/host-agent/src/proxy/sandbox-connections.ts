import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

/**
 * How a connection of a destroyed sandbox was ended (the `how` label of kiln_agent_proxy_ended_by_destroy_total):
 * - `refused`: no response had started; it got the same 502 refusal a new request for the sandbox gets.
 * - `cut`: its response was mid-body (a Connect stream, a download); the body was cut off before its end.
 * - `tunnel`: a WebSocket (or other upgraded) tunnel, closed.
 */
export type DestroyEnding = 'refused' | 'cut' | 'tunnel';

type OpenConnection = { kind: 'request'; res: ServerResponse } | { kind: 'tunnel'; socket: Duplex };

/** The JSON error body the host proxy answers refusals with ({code, message}, as the gateway's). */
export function refusalBody(status: number, message: string): string {
  return JSON.stringify({ code: status, message });
}

/**
 * Ends one proxied response because its sandbox is gone; undefined when it had already ended.
 *
 * A response whose body has started is cut, not finished: the client must see the body end early. For a Connect
 * stream this is what E2B's proxy does when a sandbox dies, and what the e2b SDK turns into its clearest error: the
 * transport reports the connection terminated, the SDK probes the sandbox's /health, gets the 502 every request for
 * a gone sandbox gets, and raises `TimeoutError: ... The sandbox was killed or reached its end of life while the
 * request was in flight.` A clean end with a Connect end-of-stream error instead reads as "[unavailable] ...: This
 * error is likely due to sandbox timeout" (or, with not_found, a deprecated NotFoundError) — and for a plain HTTP
 * download a clean end would pass a truncated file off as complete.
 */
export function endResponseOfGoneSandbox(res: ServerResponse, message: string): DestroyEnding | undefined {
  if (res.writableEnded || res.destroyed) return undefined;
  if (res.headersSent) {
    res.destroy();
    return 'cut';
  }
  const body = refusalBody(502, message);
  res.writeHead(502, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
  return 'refused';
}

/**
 * Every proxied request and tunnel still open, by sandbox id: what the proxy must end when a sandbox is destroyed.
 * A dead VM resets none of its TCP connections, so without this a stream through a killed sandbox stays open until
 * the client's own timeout. Entries remove themselves when their connection closes.
 */
export class SandboxConnections {
  private readonly open = new Map<string, Set<OpenConnection>>();

  trackRequest(sandboxId: string, res: ServerResponse): void {
    this.track(sandboxId, { kind: 'request', res }, res);
  }

  trackTunnel(sandboxId: string, socket: Duplex): void {
    this.track(sandboxId, { kind: 'tunnel', socket }, socket);
  }

  /** Open connections of one sandbox, or of all. */
  count(sandboxId?: string): number {
    if (sandboxId !== undefined) return this.open.get(sandboxId)?.size ?? 0;
    let total = 0;
    for (const set of this.open.values()) total += set.size;
    return total;
  }

  /** Ends every open connection of the sandbox at once; returns how each was ended. */
  endAll(sandboxId: string, message: string): DestroyEnding[] {
    const connections = this.open.get(sandboxId);
    if (!connections) return [];
    this.open.delete(sandboxId);
    const endings: DestroyEnding[] = [];
    for (const connection of connections) {
      if (connection.kind === 'request') {
        const ending = endResponseOfGoneSandbox(connection.res, message);
        if (ending) endings.push(ending);
      } else if (!connection.socket.destroyed) {
        connection.socket.destroy();
        endings.push('tunnel');
      }
    }
    return endings;
  }

  private track(sandboxId: string, connection: OpenConnection, closes: ServerResponse | Duplex): void {
    let connections = this.open.get(sandboxId);
    if (!connections) this.open.set(sandboxId, (connections = new Set()));
    connections.add(connection);
    closes.once('close', () => {
      const current = this.open.get(sandboxId);
      if (!current?.delete(connection)) return;
      if (current.size === 0) this.open.delete(sandboxId);
    });
  }
}
