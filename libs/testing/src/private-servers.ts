import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './ports';

export interface PrivateServer {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/** Stops a child process: SIGTERM, then SIGKILL after `graceMs`; resolves once it is gone. */
export async function stopProcess(child: ChildProcess | undefined, graceMs = 5_000): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const escalate = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(escalate);
}

/** Renders a nats-server configuration for the port and JetStream store directory chosen for it. */
export type NatsConfigRenderer = (server: { port: number; storeDir: string }) => string;

/** The arguments of a nats-server on `port` storing JetStream under `dir`: anonymous, or from `config` when given. */
export function natsServerArgs(port: number, dir: string, config?: NatsConfigRenderer): string[] {
  if (!config) return ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir];
  const file = join(dir, 'nats-server.conf');
  // It holds the users' passwords.
  writeFileSync(file, config({ port, storeDir: join(dir, 'jetstream') }), { mode: 0o600 });
  return ['-c', file];
}

/**
 * A nats-server with JetStream on a free port, private to one suite: with a shared NATS,
 * any other scheduler in the same queue group (a dev stack) could answer the suite's requests.
 * With `config` (e.g. renderNatsServerConfig of @kiln/messaging) it runs that configuration: its users only.
 */
export async function startPrivateNats(options: { config?: NatsConfigRenderer } = {}): Promise<PrivateServer> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'kiln-test-nats-'));
  const child = spawn('nats-server', natsServerArgs(port, dir, options.config), { stdio: 'ignore' });
  await waitForPort(port, 'nats-server');
  return {
    url: `nats://127.0.0.1:${port}`,
    pid: child.pid!,
    stop: async () => {
      await stopProcess(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A redis-server on a free port that persists nothing, private to one suite. */
export async function startPrivateRedis(): Promise<PrivateServer> {
  const port = await freePort();
  const child = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  await waitForPort(port, 'redis-server');
  return { url: `redis://127.0.0.1:${port}`, pid: child.pid!, stop: () => stopProcess(child) };
}
