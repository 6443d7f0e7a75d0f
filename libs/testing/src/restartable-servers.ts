import { ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './ports';
import { NatsConfigRenderer, natsServerArgs, stopProcess } from './private-servers';

/**
 * A dependency a test may take away and bring back on the same port with the same data (an outage and its end, or a
 * crash and its supervisor's restart), unlike the private servers, which pick a new port each time. Private to the
 * test, so stopping or killing it harms nobody else.
 */
export interface RestartableServer {
  readonly name: string;
  readonly url: string;
  readonly port: number;
  pid(): number | undefined;
  /** SIGKILL, no warning (a crash); resolves once the process is gone. */
  kill9(): Promise<void>;
  /** SIGTERM (an outage); resolves once the process is gone. */
  stop(): Promise<void>;
  /**
   * Starts it (again) on the same port with the same data; resolves once it serves (not merely listens: PostgreSQL
   * opens its port while it still answers "the database system is starting up"). A running one is left as is.
   */
  start(): Promise<void>;
  /** Stops it for good and removes its data. */
  dispose(): Promise<void>;
}

class SupervisedProcess implements RestartableServer {
  private child: ChildProcess | undefined;

  constructor(
    readonly name: string,
    readonly url: string,
    readonly port: number,
    private readonly launch: () => ChildProcess,
    private readonly removeData: () => void,
    /** Resolves true once the server answers requests; polled after the port opens. */
    private readonly serves: () => Promise<boolean> = async () => true,
  ) {}

  pid(): number | undefined {
    return this.child?.pid;
  }

  async start(): Promise<void> {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) return;
    this.child = this.launch();
    const exited = new Promise<never>((_, reject) => this.child!.once('exit', (code) => reject(new Error(`${this.name} exited with ${code} while starting`))));
    await Promise.race([this.untilServing(60_000), exited]);
  }

  private async untilServing(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    await waitForPort(this.port, this.name, timeoutMs);
    while (!(await this.serves())) {
      if (Date.now() > deadline) throw new Error(`${this.name} listened on ${this.port} but did not serve within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async kill9(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }

  async stop(): Promise<void> {
    await stopProcess(this.child, 10_000);
  }

  async dispose(): Promise<void> {
    await this.stop();
    this.removeData();
  }
}

/** nats-server with JetStream; its stream data survives a kill. With `config`, it runs that configuration (its users only). */
export async function startRestartableNats(options: { config?: NatsConfigRenderer } = {}): Promise<RestartableServer> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'kiln-fault-nats-'));
  const args = natsServerArgs(port, dir, options.config);
  const server = new SupervisedProcess(
    'nats-server',
    `nats://127.0.0.1:${port}`,
    port,
    () => spawn('nats-server', args, { stdio: 'ignore' }),
    () => rmSync(dir, { recursive: true, force: true }),
  );
  await server.start();
  return server;
}

/** redis-server that persists nothing, as the platform's Redis is used (a kill loses its queued jobs). */
export async function startRestartableRedis(): Promise<RestartableServer> {
  const port = await freePort();
  const server = new SupervisedProcess(
    'redis-server',
    `redis://127.0.0.1:${port}`,
    port,
    () => spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' }),
    () => undefined,
  );
  await server.start();
  return server;
}

/** The newest PostgreSQL server binaries installed from Debian's packages. */
function postgresBin(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a)) : [];
  if (versions.length === 0) throw new Error('no PostgreSQL server binaries under /usr/lib/postgresql');
  return join(root, versions[0], 'bin');
}

/**
 * A PostgreSQL cluster of its own (initdb in a temporary directory, trust auth, database `kiln`), run as the
 * `postgres` user because the server refuses root (spawned with that uid directly, so a SIGKILL reaches the server
 * itself and not a wrapper); a kill leaves WAL that the restart replays.
 */
export async function startRestartablePostgres(): Promise<RestartableServer> {
  const port = await freePort();
  const bin = postgresBin();
  const dir = mkdtempSync(join(tmpdir(), 'kiln-fault-pg-'));
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  chownSync(dir, uid, gid);
  const data = join(dir, 'data');
  const asPostgres = { uid, gid, stdio: 'ignore' as const };
  execFileSync(join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync'], asPostgres);
  const server = new SupervisedProcess(
    'postgres',
    `postgresql://postgres@127.0.0.1:${port}/kiln`,
    port,
    () => spawn(join(bin, 'postgres'), ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off'], asPostgres),
    () => rmSync(dir, { recursive: true, force: true }),
    // pg_isready exits 0 only once the server accepts connections (after startup or WAL replay after a kill).
    () => new Promise<boolean>((resolve) => execFile(join(bin, 'pg_isready'), ['-q', '-h', '127.0.0.1', '-p', String(port)], (error) => resolve(!error))),
  );
  await server.start();
  execFileSync(join(bin, 'psql'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-qc', 'create database kiln'], { uid, gid, stdio: 'pipe' });
  return server;
}
