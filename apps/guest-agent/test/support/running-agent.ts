import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createClient, type Client } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Filesystem } from '@kiln/proto/filesystem';
import { Process } from '@kiln/proto/process';

/** Built by global-setup.cjs with tools/bundle.mjs, the recipe of the shipping bundle. */
/** Built by the suite's global setup; another project's suites build their own copy and point at it with KILN_GUEST_AGENT_BUNDLE. */
export const BUNDLE = process.env.KILN_GUEST_AGENT_BUNDLE ?? join(__dirname, '..', '..', 'dist', 'test-bundle', 'guest-agent.js');

/**
 * The agent's default user is `user` (home /home/user), as in E2B templates. A CI host may not have it, so the
 * tests create it once; the command is idempotent and leaves an existing account alone.
 */
export function ensureDefaultUser(): void {
  const probe = spawnSync('id', ['user']);
  if (probe.status === 0) return;
  const made = spawnSync('useradd', ['-m', '-s', '/bin/bash', 'user'], { encoding: 'utf8' });
  if (made.status !== 0 && spawnSync('id', ['user']).status !== 0) {
    throw new Error(`could not create the test user 'user': ${made.stderr}`);
  }
}

/** A guest agent started from the bundle on a free port, stopped (with all its processes) by stop(). */
export class RunningAgent {
  private constructor(
    readonly child: ChildProcess,
    readonly port: number,
    private readonly logs: string[],
  ) {}

  /**
   * `guestDuties: 'off'` (the default) so /init in tests never steps the host's clock. A suite that turns duties on
   * must never send /init a timestamp.
   */
  static async start(opts: { guestDuties?: 'on' | 'off' } = {}): Promise<RunningAgent> {
    ensureDefaultUser();
    const duties = opts.guestDuties ?? 'off';
    // --jitless as the VM image starts it (tools/guest-image/guest-init.sh), so the suites test that mode.
    const child = spawn(process.execPath, ['--jitless', BUNDLE, '--port', '0', '--host', '127.0.0.1', '--guest-duties', duties], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const logs: string[] = [];
    child.stderr!.on('data', (d: Buffer) => logs.push(d.toString()));
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`agent did not start: ${out} ${logs.join('')}`)), 10_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const match = /listening on .*:(\d+)/.exec(out);
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`agent exited with ${code}: ${logs.join('')}`));
      });
    });
    return new RunningAgent(child, port, logs);
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get pid(): number {
    return this.child.pid!;
  }

  get stderr(): string {
    return this.logs.join('');
  }

  get isAlive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Peak resident memory of the agent process so far, in bytes. */
  peakRssBytes(): number {
    const status = readFileSync(`/proc/${this.pid}/status`, 'utf8');
    const kb = /VmHWM:\s+(\d+)\s+kB/.exec(status);
    if (!kb) throw new Error('no VmHWM in /proc status');
    return Number(kb[1]) * 1024;
  }

  processClient(opts: { httpVersion?: '1.1' | '2'; token?: string; user?: string } = {}): Client<typeof Process> {
    return createClient(Process, this.transport(opts));
  }

  filesystemClient(opts: { httpVersion?: '1.1' | '2'; token?: string; user?: string } = {}): Client<typeof Filesystem> {
    return createClient(Filesystem, this.transport(opts));
  }

  async init(body: Record<string, unknown>, token?: string): Promise<Response> {
    return fetch(`${this.url}/init`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(token ? { 'x-access-token': token } : {}) },
      body: JSON.stringify(body),
    });
  }

  async stop(): Promise<void> {
    if (!this.isAlive) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }

  private transport(opts: { httpVersion?: '1.1' | '2'; token?: string; user?: string }) {
    return createConnectTransport({
      baseUrl: this.url,
      httpVersion: opts.httpVersion ?? '1.1',
      interceptors: [
        (next) => async (req) => {
          if (opts.token) req.header.set('X-Access-Token', opts.token);
          if (opts.user) req.header.set('Authorization', `Basic ${Buffer.from(`${opts.user}:`).toString('base64')}`);
          return next(req);
        },
      ],
    });
  }
}

/** Unique scratch directory owned by the default user, removed by the caller. */
export function scratchDirName(label: string): string {
  return `/home/user/kiln-ga-test-${label}-${process.pid}-${Date.now()}`;
}
