import { Agent } from 'node:http';
import { createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Process } from '@kiln/proto/process';
import type { TemplateBuild } from '../template';
import { TemplateReadyError } from './snapshot.errors';

export interface TemplateStartOptions {
  /** How long the ready command may keep failing. */
  readyTimeoutMs: number;
  /** Pause between two runs of the ready command. */
  readyIntervalMs?: number;
}

/** Output kept per command for the failure message. */
const OUTPUT_TAIL_BYTES = 4096;

/**
 * Launches a built template's start command in its template VM and waits for its ready command, before the memory
 * is saved: every sandbox of the template then starts with the process already running.
 *
 * The start command runs through the guest agent as a login shell (as the template's user, in its workdir, with its
 * envs) with no deadline; the stream is only followed to collect output, and is dropped before the snapshot: the agent
 * keeps a process whose client went away running (envd's semantics), and drops its output when nobody listens. All
 * connections are closed on return, so no half-open socket is saved in the guest's memory.
 */
export async function startTemplateCommands(
  address: string,
  port: number,
  build: Pick<TemplateBuild, 'startCmd' | 'readyCmd' | 'envs' | 'workdir' | 'user'>,
  options: TemplateStartOptions,
): Promise<{ readyAfterMs: number }> {
  const connections = new Agent({ keepAlive: true, maxSockets: 4 });
  const transport = createConnectTransport({ baseUrl: `http://${address}:${port}`, httpVersion: '1.1', nodeOptions: { agent: connections } });
  const processes = createClient(Process, transport);
  const headers = build.user ? { authorization: `Basic ${Buffer.from(`${build.user}:`).toString('base64')}` } : {};
  const shell = (command: string) => ({ cmd: '/bin/bash', args: ['-l', '-c', command], envs: build.envs ?? {}, cwd: build.workdir });
  const started = Date.now();
  const follow = new AbortController();
  const startOutput = new OutputTail();
  let startEnded: string | undefined;
  let following: Promise<void> = Promise.resolve();
  try {
    if (build.startCmd) {
      const stream = processes.start({ process: shell(build.startCmd), stdin: false }, { headers, signal: follow.signal })[Symbol.asyncIterator]();
      // The first event says the process runs (or the request failed: an unknown user, a missing workdir).
      const first = await stream.next().catch((error: unknown) => {
        throw new TemplateReadyError(`start command could not be launched: ${(error as Error).message}`, '');
      });
      if (first.done || first.value.event?.event.case !== 'start') {
        throw new TemplateReadyError('start command could not be launched: the agent sent no start event', '');
      }
      following = (async () => {
        try {
          for (;;) {
            const next = await stream.next();
            if (next.done) return;
            const event = next.value.event?.event;
            if (event?.case === 'data' && (event.value.output.case === 'stdout' || event.value.output.case === 'stderr')) {
              startOutput.push(Buffer.from(event.value.output.value));
            } else if (event?.case === 'end') {
              startEnded = `start command exited with ${event.value.exitCode}${event.value.error ? ` (${event.value.error})` : ''}`;
            }
          }
        } catch {
          // Dropped on purpose before the snapshot (or the VM went away: the ready wait reports it).
        }
      })();
    }
    if (build.readyCmd) {
      const deadline = started + options.readyTimeoutMs;
      const readyOutput = new OutputTail();
      let lastExit = 'never ran';
      for (;;) {
        const remaining = deadline - Date.now();
        if (remaining <= 0) {
          const output = [`$ ${build.readyCmd}`, readyOutput.text(), ...(build.startCmd ? [`$ ${build.startCmd}${startEnded ? ` (${startEnded})` : ''}`, startOutput.text()] : [])].join('\n');
          throw new TemplateReadyError(
            `ready command did not succeed within ${Math.round(options.readyTimeoutMs / 1000)} s (last: ${lastExit})`,
            output,
          );
        }
        readyOutput.clear();
        let exitCode: number | undefined;
        try {
          for await (const response of processes.start({ process: shell(build.readyCmd), stdin: false }, { headers, timeoutMs: Math.max(1_000, Math.min(remaining, 30_000)) })) {
            const event = response.event?.event;
            if (event?.case === 'data' && (event.value.output.case === 'stdout' || event.value.output.case === 'stderr')) {
              readyOutput.push(Buffer.from(event.value.output.value));
            } else if (event?.case === 'end') exitCode = event.value.exitCode;
          }
          lastExit = `exit ${exitCode ?? 'unknown'}`;
        } catch (error) {
          lastExit = (error as Error).message;
        }
        if (exitCode === 0) break;
        await new Promise((resolve) => setTimeout(resolve, options.readyIntervalMs ?? 1_000));
      }
    }
    return { readyAfterMs: Date.now() - started };
  } finally {
    follow.abort();
    await following;
    connections.destroy();
  }
}

/** The last OUTPUT_TAIL_BYTES of a command's output. */
class OutputTail {
  private buffer = Buffer.alloc(0);

  push(chunk: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    if (this.buffer.length > OUTPUT_TAIL_BYTES) this.buffer = this.buffer.subarray(this.buffer.length - OUTPUT_TAIL_BYTES);
  }

  clear(): void {
    this.buffer = Buffer.alloc(0);
  }

  text(): string {
    return this.buffer.toString('utf8').trimEnd();
  }
}
