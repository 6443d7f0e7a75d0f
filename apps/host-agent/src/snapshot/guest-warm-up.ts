import { randomBytes } from 'node:crypto';
import { createClient } from '@connectrpc/connect';
import { GUEST_ENTROPY_SEED_BYTES, type GuestInitBody } from '@kiln/contracts/guest-init';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Filesystem } from '@kiln/proto/filesystem';
import { Process } from '@kiln/proto/process';

/** The SDK's `commands.run` shape: a login shell as the default user. */
const LOGIN_SHELL_COMMAND = { cmd: '/bin/bash', args: ['-l', '-c', 'true'], envs: {} };
const WARM_UP_RUNS = 3;

/**
 * Exercises the guest agent's hot paths (commands, filesystem, /init) in the template VM, before its memory is
 * saved: a restored clone then starts with the agent's process and filesystem code already
 * compiled by V8 and with bash, its libraries and profile scripts in the guest page cache.
 * Translations are not part of a snapshot (TCG redoes them), but parsing, compiling and
 * disk reads are, and those dominated a clone's first command.
 */
export async function warmGuestAgent(address: string, port: number, timeoutMs = 60_000): Promise<void> {
  const transport = createConnectTransport({ baseUrl: `http://${address}:${port}`, httpVersion: '1.1' });
  const processes = createClient(Process, transport);
  const filesystem = createClient(Filesystem, transport);
  for (let run = 0; run < WARM_UP_RUNS; run++) {
    let exitCode: number | undefined;
    for await (const response of processes.start({ process: LOGIN_SHELL_COMMAND }, { timeoutMs })) {
      if (response.event?.event.case === 'end') exitCode = response.event.event.value.exitCode;
    }
    if (exitCode !== 0) throw new Error(`warm-up command exited with ${exitCode ?? 'no end event'}`);
  }
  await filesystem.listDir({ path: '/home/user', depth: 1 }, { timeoutMs });
  await filesystem.stat({ path: '/home/user' }, { timeoutMs });
  // /init with the clock and an entropy seed: sets no token or env, but runs the request path (the clock step,
  // since a guest without an RTC boots at the epoch, and the CRNG reseed) that every clone's create goes through.
  const init = await fetch(`http://${address}:${port}/init`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ timestamp: new Date().toISOString(), entropySeed: randomBytes(GUEST_ENTROPY_SEED_BYTES.sent).toString('base64') } satisfies GuestInitBody),
    signal: AbortSignal.timeout(timeoutMs),
  });
  if (init.status !== 204) throw new Error(`warm-up /init answered ${init.status}`);
}
