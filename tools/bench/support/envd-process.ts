import type { RequestOptions } from 'node:https';
import { performance } from 'node:perf_hooks';
import { createClient, type Client } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Process } from '@kiln/proto/process';

/** An envd Process client over HTTP/1.1, as the e2b SDK talks to a sandbox, with fixed headers on every call. */
/** `tls`: client certificate options for a host agent's own proxy, which speaks internal mTLS (bench-host-agent agentEnvd). */
export function envdProcess(baseUrl: string, headers: Record<string, string>, tls?: RequestOptions): Client<typeof Process> {
  return createClient(
    Process,
    createConnectTransport({
      baseUrl,
      httpVersion: '1.1',
      interceptors: [(next) => async (req) => {
        for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
        return next(req);
      }],
      ...(tls ? { nodeOptions: tls } : {}),
    }),
  );
}

/**
 * Time from `started` until the first stdout byte of `echo` arrives (the command is plain argv, no shell),
 * retried every 5 ms while the guest's socket is not back.
 */
export async function firstStdoutByte(client: Client<typeof Process>, started: number): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    try {
      for await (const response of client.start({ process: { cmd: '/bin/echo', args: ['kiln'], envs: {} } }, { timeoutMs: 10_000 })) {
        const event = response.event?.event;
        if (event?.case === 'data' && event.value.output.case === 'stdout') return performance.now() - started;
      }
    } catch (error) {
      if (attempt > 400) throw error;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}
