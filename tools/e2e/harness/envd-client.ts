import { Client, Interceptor, createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import type { RequestOptions } from 'node:https';
import { Process } from '@kiln/proto/process';

export interface CommandResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/**
 * A Connect client for the guest agent's process service, addressed through a traffic proxy by headers. `tls`: the
 * client certificate options a host agent's own (https) proxy requires (internal-tls.ts hostProxyRequestOptions).
 */
export function envdProcessClient(proxyUrl: string, sandboxId: string, accessToken?: string, tls?: RequestOptions): Client<typeof Process> {
  const route: Interceptor = (next) => async (request) => {
    request.header.set('E2b-Sandbox-Id', sandboxId);
    request.header.set('E2b-Sandbox-Port', '49983');
    if (accessToken) request.header.set('X-Access-Token', accessToken);
    return next(request);
  };
  return createClient(Process, createConnectTransport({ baseUrl: proxyUrl, httpVersion: '1.1', interceptors: [route], ...(tls ? { nodeOptions: tls } : {}) }));
}

/** Runs `bash -l -c command` as envd does and collects its output. */
export async function runCommand(client: Client<typeof Process>, command: string, timeoutMs = 60_000): Promise<CommandResult> {
  const result: CommandResult = { stdout: '', stderr: '', exitCode: -1 };
  const stream = client.start(
    { process: { cmd: '/bin/bash', args: ['-l', '-c', command], envs: {} } },
    { timeoutMs },
  );
  for await (const response of stream) {
    const event = response.event?.event;
    if (event?.case === 'data') {
      const output = event.value.output;
      if (output.case === 'stdout') result.stdout += Buffer.from(output.value).toString();
      if (output.case === 'stderr') result.stderr += Buffer.from(output.value).toString();
    } else if (event?.case === 'end') {
      result.exitCode = event.value.exitCode;
    }
  }
  return result;
}
