import type { Agent } from 'node:http';
import { createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Process } from '@kiln/proto/process';

/**
 * Has the guest write its dirty page cache to its disk (`sync`), through its agent. A pause that keeps only the disk
 * does this first: what a program wrote seconds before is then on the disk the cold boot finds, as E2B's
 * filesystem-only pause keeps it. Resolves with the command's exit code.
 */
export async function syncGuestFilesystems(
  address: string,
  port: number,
  connections: Agent,
  options: { accessToken?: string; timeoutMs: number },
): Promise<number | undefined> {
  const transport = createConnectTransport({ baseUrl: `http://${address}:${port}`, httpVersion: '1.1', nodeOptions: { agent: connections } });
  const headers: Record<string, string> = options.accessToken ? { 'x-access-token': options.accessToken } : {};
  let exitCode: number | undefined;
  for await (const response of createClient(Process, transport).start(
    { process: { cmd: '/bin/sync', args: [], envs: {} } },
    { timeoutMs: options.timeoutMs, headers },
  )) {
    if (response.event?.event.case === 'end') exitCode = response.event.event.value.exitCode;
  }
  return exitCode;
}
