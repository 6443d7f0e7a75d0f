import { createReadStream } from 'node:fs';
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Process } from '@kiln/proto/process';
import { randomBytes } from 'node:crypto';
import { GUEST_ENTROPY_SEED_BYTES } from '@kiln/contracts/guest-init';
import { initGuestAgent, waitForGuestAgent } from '../guest-agent-client';
import { GUEST_AGENT_PORT, OPEN_EGRESS_POLICY, type NetworkSlot } from '../network';
import type { EgressPolicy } from '@kiln/contracts';
import { coldBootSpec, type TemplateBuild } from '../template';
import type { VmHandle, VmmDriver } from '../vmm';
import { BuildCancelledError, BuildInfrastructureError, UserStepError } from './template-build.errors';

/** Network slots for build VMs; NetworkSlotPool satisfies it. */
export interface BuildNetwork {
  acquire(): Promise<NetworkSlot>;
  release(slot: Pick<NetworkSlot, 'index'>): Promise<void>;
  setEgressPolicy(slot: Pick<NetworkSlot, 'index'>, policy: Partial<EgressPolicy>): Promise<unknown>;
}

export interface BuildVmOptions {
  id: string;
  /** The Kiln guest runtime (the `base` template's current build): its kernel and initramfs boot the disk. */
  runtime: TemplateBuild;
  vcpus: number;
  memoryMib: number;
  /** The VM's root disk: a qcow2 overlay over the parent layer, owned by the caller. */
  disk: string;
  /** Scratch dir of this VM (state dir, serial log); removed by destroy(). */
  runDir: string;
  bootTimeoutMs: number;
  /** The resolvers the guest's /etc/resolv.conf gets (the host's guest nameservers). */
  nameservers: string[];
  signal: AbortSignal;
}

export interface GuestCommand {
  cmd: string;
  args: string[];
  envs: Record<string, string>;
  /** Absolute; undefined: the user's home. */
  cwd?: string;
  user: string;
}

export type OutputSink = (stream: 'stdout' | 'stderr', line: string) => void;

/** Longest line streamed as one log entry; longer output is cut into pieces of this size. */
const MAX_LINE = 4096;

/**
 * One build VM: a cold boot of the guest runtime over a step's disk, with a network slot of its own whose egress is
 * the platform floor (open to the internet, closed to the host and other slots), driven through its guest agent.
 * Whoever boots one must destroy() it, on every path: that kills the VMM, releases the slot and removes the run dir.
 */
export class BuildVm {
  private readonly connections = new Agent({ keepAlive: true, maxSockets: 4 });

  private constructor(
    private readonly network: BuildNetwork,
    private readonly slot: NetworkSlot,
    private readonly vm: VmHandle,
    private readonly runDir: string,
    readonly serialLogPath: string,
  ) {}

  static async boot(driver: VmmDriver, network: BuildNetwork, options: BuildVmOptions): Promise<BuildVm> {
    options.signal.throwIfAborted();
    await mkdir(options.runDir, { recursive: true });
    let slot: NetworkSlot | undefined;
    let vm: VmHandle | undefined;
    let built: BuildVm | undefined;
    const serialLogPath = join(options.runDir, 'serial.log');
    try {
      slot = await network.acquire();
      // Builds fetch packages: public egress, with the platform floor every slot enforces (no host, no other slot).
      await network.setEgressPolicy(slot, OPEN_EGRESS_POLICY.policy);
      options.signal.throwIfAborted();
      const runtime = { ...options.runtime, vcpus: options.vcpus, memoryMib: options.memoryMib };
      vm = await driver.spawn(
        coldBootSpec(runtime, {
          id: options.id,
          rootDisk: { path: options.disk, format: 'qcow2' },
          slot,
          stateDir: join(options.runDir, 'vm'),
          serialLogPath,
        }),
      );
      const stop = new AbortController();
      const onAbort = () => stop.abort(options.signal.reason);
      options.signal.addEventListener('abort', onAbort, { once: true });
      void vm.exited.then((exit) => stop.abort(`build VM exited (${exit.reason})`));
      try {
        await waitForGuestAgent(slot.hostAddress, options.runtime.agentPort ?? GUEST_AGENT_PORT, { timeoutMs: options.bootTimeoutMs, abort: stop.signal });
      } catch (error) {
        options.signal.throwIfAborted();
        const serial = await readFile(serialLogPath, 'utf8').catch(() => '');
        throw new BuildInfrastructureError(`build VM ${options.id} did not come up: ${(error as Error).message}\n${serial.slice(-1500)}`);
      } finally {
        options.signal.removeEventListener('abort', onAbort);
      }
      built = new BuildVm(network, slot, vm, options.runDir, serialLogPath);
      // A guest without an RTC boots at the epoch: apt refuses Release files "not valid yet" and TLS refuses every
      // certificate. /init sets the clock, reseeds the CRNG and writes the resolvers; no token (only the host reaches
      // the agent, through the slot).
      await initGuestAgent(
        slot.hostAddress,
        built.connections,
        {
          timestamp: new Date().toISOString(),
          entropySeed: randomBytes(GUEST_ENTROPY_SEED_BYTES.sent).toString('base64'),
          nameservers: options.nameservers,
        },
        30_000,
        { signal: options.signal, port: options.runtime.agentPort ?? GUEST_AGENT_PORT },
      ).catch((error: unknown) => {
        throw new BuildInfrastructureError(`build VM ${options.id}: ${(error as Error).message}`);
      });
      vm = undefined;
      slot = undefined;
      return built;
    } catch (error) {
      // (vm and slot are unset once a BuildVm owns them.)
      built?.connections.destroy();
      if (vm) await vm.kill().catch(() => undefined);
      if (slot) await network.release(slot).catch(() => undefined);
      await rm(options.runDir, { recursive: true, force: true });
      if (options.signal.aborted) throw asCancelled(options.signal);
      throw error;
    }
  }

  private get baseUrl(): string {
    return `http://${this.slot.hostAddress}:${GUEST_AGENT_PORT}`;
  }

  /**
   * Runs a command through the guest agent and streams its output line by line; resolves with its exit code. A user
   * the guest does not know fails like the command would (UserStepError of `step`).
   */
  async run(command: GuestCommand, output: OutputSink, options: { step: number; timeoutMs: number; signal: AbortSignal }): Promise<number> {
    const transport = createConnectTransport({ baseUrl: this.baseUrl, httpVersion: '1.1', nodeOptions: { agent: this.connections } });
    const client = createClient(Process, transport);
    const lines = { stdout: new LineSplitter((l) => output('stdout', l)), stderr: new LineSplitter((l) => output('stderr', l)) };
    let exitCode: number | undefined;
    let status = '';
    try {
      for await (const response of client.start(
        { process: { cmd: command.cmd, args: command.args, envs: command.envs, cwd: command.cwd }, stdin: false },
        { signal: options.signal, timeoutMs: options.timeoutMs, headers: { authorization: basicUser(command.user) } },
      )) {
        const event = response.event?.event;
        if (event?.case === 'data') {
          const out = event.value.output;
          if (out.case === 'stdout' || out.case === 'stderr') lines[out.case].push(Buffer.from(out.value));
          else if (out.case === 'pty') lines.stdout.push(Buffer.from(out.value));
        } else if (event?.case === 'end') {
          exitCode = event.value.exitCode;
          status = event.value.status;
        }
      }
    } catch (error) {
      if (options.signal.aborted) throw asCancelled(options.signal);
      if (error instanceof ConnectError && (error.code === Code.Unauthenticated || error.code === Code.InvalidArgument)) {
        throw new UserStepError(options.step, `step ${options.step}: ${error.rawMessage}`);
      }
      if (error instanceof ConnectError && error.code === Code.DeadlineExceeded) {
        throw new UserStepError(options.step, `step ${options.step}: did not finish within ${Math.round(options.timeoutMs / 1000)} s`);
      }
      throw new BuildInfrastructureError(`step ${options.step}: the build VM's agent failed: ${(error as Error).message}`);
    } finally {
      lines.stdout.flush();
      lines.stderr.flush();
    }
    if (exitCode === undefined) throw new BuildInfrastructureError(`step ${options.step}: the command's stream ended without an exit (${status || 'no status'})`);
    return exitCode;
  }

  /** Uploads a host file into the guest (as root), through the agent's /files. */
  async upload(localPath: string, guestPath: string, signal: AbortSignal): Promise<void> {
    const { size } = await stat(localPath);
    const url = new URL('/files', this.baseUrl);
    url.searchParams.set('path', guestPath);
    url.searchParams.set('username', 'root');
    await new Promise<void>((resolve, reject) => {
      const req = request(
        url,
        { method: 'POST', agent: this.connections, signal, headers: { 'content-type': 'application/octet-stream', 'content-length': size } },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (body += chunk.slice(0, 2000)));
          res.on('end', () =>
            res.statusCode === 200 ? resolve() : reject(new BuildInfrastructureError(`upload to the build VM failed: HTTP ${res.statusCode} ${body}`)),
          );
        },
      );
      req.on('error', (error) => reject(signal.aborted ? asCancelled(signal) : error));
      pipeline(createReadStream(localPath), req).catch((error: unknown) => reject(signal.aborted ? asCancelled(signal) : error));
    });
  }

  /**
   * Makes what the guest wrote durable on the disk and ends the VM: `sync` in the guest, then QEMU's quit (which
   * flushes its own caches). The disk is then a finished layer.
   */
  async finish(step: number, signal: AbortSignal): Promise<void> {
    const code = await this.run({ cmd: '/bin/sync', args: [], envs: {}, user: 'root' }, () => undefined, { step, timeoutMs: 120_000, signal });
    if (code !== 0) throw new BuildInfrastructureError(`step ${step}: sync in the build VM exited with ${code}`);
    this.connections.destroy();
    await this.vm.stop(30_000);
  }

  /** Kills the VM if it still runs, releases its slot, removes its run dir. Safe to call more than once. */
  async destroy(): Promise<void> {
    this.connections.destroy();
    if (!this.vm.hasExited) await this.vm.kill().catch(() => undefined);
    await this.network.release(this.slot).catch(() => undefined);
    await rm(this.runDir, { recursive: true, force: true });
  }
}

function basicUser(user: string): string {
  return `Basic ${Buffer.from(`${user}:`).toString('base64')}`;
}

function asCancelled(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new BuildCancelledError(String(signal.reason ?? 'cancelled'));
}

/** Cuts a byte stream into lines (UTF-8 safe across chunks); over-long lines are split. */
class LineSplitter {
  private pending: Buffer = Buffer.alloc(0);

  constructor(private readonly emit: (line: string) => void) {}

  push(chunk: Buffer): void {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    for (;;) {
      const newline = this.pending.indexOf(0x0a);
      if (newline === -1) break;
      this.emitLine(this.pending.subarray(0, newline));
      this.pending = this.pending.subarray(newline + 1);
    }
    while (this.pending.length > MAX_LINE) {
      this.emitLine(this.pending.subarray(0, MAX_LINE));
      this.pending = this.pending.subarray(MAX_LINE);
    }
  }

  flush(): void {
    if (this.pending.length) this.emitLine(this.pending);
    this.pending = Buffer.alloc(0);
  }

  private emitLine(bytes: Buffer): void {
    this.emit(bytes.toString('utf8').replace(/\r$/, ''));
  }
}
