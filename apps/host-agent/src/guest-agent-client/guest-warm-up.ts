import { randomBytes } from 'node:crypto';
import { Agent } from 'node:http';
import { Code, ConnectError, createClient, type Client } from '@connectrpc/connect';
import { GUEST_ENTROPY_SEED_BYTES, type GuestInitBody } from '@kiln/contracts/guest-init';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Filesystem } from '@kiln/proto/filesystem';
import { Process } from '@kiln/proto/process';
import { initGuestAgent } from './guest-init';

/** The SDK's `commands.run` shape: a login shell as the default user. */
const LOGIN_SHELL_COMMAND = { cmd: '/bin/bash', args: ['-l', '-c', 'true'], envs: {} };

export interface GuestWarmUpOptions {
  /** Login-shell commands to run (V8 compiles on the first, the page cache fills on the first few). */
  commandRuns?: number;
  timeoutMs?: number;
  /** Resolvers for the guest's /etc/resolv.conf, sent with the warm-up's /init as a create sends them. */
  nameservers?: string[];
}

/**
 * Exercises the guest agent's hot paths (commands, filesystem, /init). Two uses:
 * - in the template VM, before its memory is saved: a restored clone then starts with the agent's code already
 *   compiled by V8 and with bash, its libraries and profile scripts in the guest page cache;
 * - in a pooled clone, before it is paused to wait for a create: what the clone runs first after a restore is
 *   translated by TCG then, once, instead of on the create's path (translations live in the VMM process, not in
 *   the snapshot).
 * Its connections are closed at the end, so no half-open socket is left in the guest's memory.
 */
export async function warmGuestAgent(address: string, port: number, options: GuestWarmUpOptions = {}): Promise<void> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  const connections = new Agent({ keepAlive: true, maxSockets: 1 });
  try {
    await warmUp(address, port, connections, { commandRuns: options.commandRuns ?? 3, timeoutMs, nameservers: options.nameservers });
  } finally {
    connections.destroy();
  }
}

async function warmUp(
  address: string,
  port: number,
  connections: Agent,
  { commandRuns, timeoutMs, nameservers }: { commandRuns: number; timeoutMs: number; nameservers?: string[] },
): Promise<void> {
  const transport = createConnectTransport({ baseUrl: `http://${address}:${port}`, httpVersion: '1.1', nodeOptions: { agent: connections } });
  const processes = createClient(Process, transport);
  const filesystem = createClient(Filesystem, transport);
  // Templates built from images may lack bash (busybox, alpine): their warm-up runs the shell they have.
  const shell = await firstExisting(filesystem, ['/bin/bash', '/bin/sh', '/opt/kiln/bin/busybox'], timeoutMs);
  const warmUpCommand = shell === '/bin/bash' ? LOGIN_SHELL_COMMAND : { cmd: shell, args: shell.endsWith('busybox') ? ['sh', '-c', 'true'] : ['-c', 'true'], envs: {} };
  for (let run = 0; run < commandRuns; run++) {
    let exitCode: number | undefined;
    for await (const response of processes.start({ process: warmUpCommand }, { timeoutMs })) {
      if (response.event?.event.case === 'end') exitCode = response.event.event.value.exitCode;
    }
    if (exitCode !== 0) throw new Error(`warm-up command exited with ${exitCode ?? 'no end event'}`);
  }
  // The default user's home as the SDK lists it first; a template whose default user is another (an image's own
  // User) may not read /home/user, and then lists its root instead.
  const listed = await filesystem.listDir({ path: '/home/user', depth: 1 }, { timeoutMs }).then(
    () => '/home/user',
    (error: unknown) => {
      if (error instanceof ConnectError && (error.code === Code.PermissionDenied || error.code === Code.NotFound)) return '/';
      throw error;
    },
  );
  if (listed === '/') await filesystem.listDir({ path: '/', depth: 1 }, { timeoutMs });
  await filesystem.stat({ path: listed }, { timeoutMs });
  // /init as every create sends it (clock step, since a guest without an RTC boots at the epoch; CRNG reseed; a
  // token), one request that must present the token, and /init again to clear it: the guest ends as it began,
  // with no token and no env vars, and the token check's code has run.
  const warmUpToken = randomBytes(16).toString('hex');
  const init = (body: GuestInitBody, currentAccessToken?: string) =>
    initGuestAgent(address, connections, body, timeoutMs, { port, currentAccessToken });
  await init({
    timestamp: new Date().toISOString(),
    entropySeed: randomBytes(GUEST_ENTROPY_SEED_BYTES.sent).toString('base64'),
    accessToken: warmUpToken,
    nameservers,
  });
  let exitCode: number | undefined;
  const tokenCommand = shell === '/bin/bash' ? { cmd: '/bin/true', args: [], envs: {} } : warmUpCommand;
  for await (const response of processes.start({ process: tokenCommand }, { timeoutMs, headers: { 'x-access-token': warmUpToken } })) {
    if (response.event?.event.case === 'end') exitCode = response.event.event.value.exitCode;
  }
  if (exitCode !== 0) throw new Error(`warm-up command with a token exited with ${exitCode ?? 'no end event'}`);
  await init({ accessToken: '' }, warmUpToken);
}

async function firstExisting(filesystem: Client<typeof Filesystem>, paths: string[], timeoutMs: number): Promise<string> {
  for (const path of paths) {
    const found = await filesystem.stat({ path }, { timeoutMs }).then(
      () => true,
      (error: unknown) => {
        if (error instanceof ConnectError && error.code === Code.NotFound) return false;
        throw error;
      },
    );
    if (found) return path;
  }
  throw new Error(`the guest has none of ${paths.join(', ')}`);
}
