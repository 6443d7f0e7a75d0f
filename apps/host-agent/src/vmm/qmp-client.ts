import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import { QmpCommandError, QmpConnectionError } from './vmm.errors';

/** Run states reported by `query-status` (QEMU's RunState enum, the ones Kiln acts on). */
export type QemuRunState =
  | 'running'
  | 'paused'
  | 'inmigrate'
  | 'postmigrate'
  | 'prelaunch'
  | 'finish-migrate'
  | 'shutdown'
  | 'guest-panicked'
  | 'internal-error'
  | 'io-error'
  | 'suspended'
  | (string & {});

export interface QmpStatus {
  running: boolean;
  singlestep?: boolean;
  status: QemuRunState;
}

export interface QmpMigrationInfo {
  status?: 'none' | 'setup' | 'active' | 'completed' | 'failed' | 'cancelled' | (string & {});
  'error-desc'?: string;
  'total-time'?: number;
  downtime?: number;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

/** The QMP commands Kiln uses, with their argument and return types. */
export interface QmpCommands {
  qmp_capabilities: { args: Record<string, never>; ret: Record<string, never> };
  'query-status': { args: Record<string, never>; ret: QmpStatus };
  stop: { args: Record<string, never>; ret: Record<string, never> };
  cont: { args: Record<string, never>; ret: Record<string, never> };
  quit: { args: Record<string, never>; ret: Record<string, never> };
  'system_powerdown': { args: Record<string, never>; ret: Record<string, never> };
  'migrate-set-capabilities': {
    args: { capabilities: Array<{ capability: string; state: boolean }> };
    ret: Record<string, never>;
  };
  migrate: { args: { uri: string }; ret: Record<string, never> };
  'migrate-incoming': { args: { uri: string }; ret: Record<string, never> };
  'query-migrate': { args: Record<string, never>; ret: QmpMigrationInfo };
  /** Device state without RAM (despite the name, not Xen-specific): what a checkpoint of a clone saves. */
  'xen-save-devices-state': { args: { filename: string; live?: boolean }; ret: Record<string, never> };
}

interface PendingCommand {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

/**
 * Minimal QMP client over a unix socket: newline-delimited JSON, commands matched to
 * replies by id, asynchronous events re-emitted as `event` (and `event:<NAME>`).
 * Emits `close` once when the socket ends, which is how callers learn that QEMU died.
 */
export class QmpClient extends EventEmitter {
  private readonly pending = new Map<number, PendingCommand>();
  private nextId = 1;
  private buffer = '';
  private closed = false;

  private constructor(
    private readonly socket: Socket,
    readonly socketPath: string,
  ) {
    super();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', () => undefined); // 'close' follows and carries the outcome
    socket.on('close', () => this.onClose());
  }

  /**
   * Connects, consumes the greeting and negotiates capabilities. Retries while the socket
   * does not exist yet (QEMU still starting) until `timeoutMs`, or until `abort` fires.
   */
  static async connect(socketPath: string, timeoutMs: number, abort?: AbortSignal): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown;
    for (;;) {
      if (abort?.aborted) throw new QmpConnectionError(`QMP connect to ${socketPath} aborted: ${String(abort.reason)}`);
      try {
        const socket = await openSocket(socketPath);
        const client = new QmpClient(socket, socketPath);
        await client.handshake(Math.max(deadline - Date.now(), 1000));
        return client;
      } catch (error) {
        lastError = error;
        const code = (error as NodeJS.ErrnoException).code;
        const retryable = code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EAGAIN';
        if (!retryable || Date.now() >= deadline) {
          throw new QmpConnectionError(`QMP connect to ${socketPath} failed: ${describe(lastError)}`);
        }
        await new Promise((r) => setTimeout(r, 2));
      }
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  async execute<C extends keyof QmpCommands>(
    command: C,
    ...args: QmpCommands[C]['args'] extends Record<string, never> ? [] : [QmpCommands[C]['args']]
  ): Promise<QmpCommands[C]['ret']> {
    return (await this.send(command, args[0])) as QmpCommands[C]['ret'];
  }

  /** Resolves with the next event named `name`, or rejects on timeout or socket close. */
  waitForEvent(name: string, timeoutMs: number): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(new QmpConnectionError(`QMP socket closed while waiting for ${name}`));
      const cleanup = () => {
        clearTimeout(timer);
        this.off(`event:${name}`, onEvent);
        this.off('close', onClose);
      };
      const onEvent = (event: QmpEvent) => {
        cleanup();
        resolve(event);
      };
      const onClose = () => {
        cleanup();
        reject(new QmpConnectionError(`QMP socket closed while waiting for ${name}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpConnectionError(`timed out after ${timeoutMs} ms waiting for QMP event ${name}`));
      }, timeoutMs);
      this.on(`event:${name}`, onEvent);
      this.once('close', onClose);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private async handshake(timeoutMs: number): Promise<void> {
    const greeting = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new QmpConnectionError('no QMP greeting')), timeoutMs);
      this.once('greeting', () => {
        clearTimeout(timer);
        resolve();
      });
      this.once('close', () => {
        clearTimeout(timer);
        reject(Object.assign(new QmpConnectionError('QMP socket closed before greeting'), { code: 'ECONNREFUSED' }));
      });
    });
    await greeting;
    await this.send('qmp_capabilities', undefined);
  }

  private send(command: string, args: object | undefined): Promise<unknown> {
    if (this.closed) return Promise.reject(new QmpConnectionError(`QMP socket closed, cannot run ${command}`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { command, resolve, reject });
      const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.socket.write(`${JSON.stringify(message)}\n`);
    });
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // QEMU only writes JSON here; a torn line would be a QEMU bug, not ours to crash on
    }
    if ('QMP' in message) {
      this.emit('greeting', message.QMP);
      return;
    }
    if (typeof message.event === 'string') {
      const event = message as unknown as QmpEvent;
      this.emit('event', event);
      this.emit(`event:${event.event}`, event);
      return;
    }
    const id = message.id as number | undefined;
    const pending = id === undefined ? undefined : this.pending.get(id);
    if (!pending || id === undefined) return;
    this.pending.delete(id);
    if ('error' in message) {
      const error = message.error as { class?: string; desc?: string };
      pending.reject(new QmpCommandError(pending.command, error.class ?? 'GenericError', error.desc ?? 'unknown error'));
    } else {
      pending.resolve(message.return);
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    for (const [, pending] of this.pending) {
      pending.reject(new QmpConnectionError(`QMP socket closed during ${pending.command}`));
    }
    this.pending.clear();
    this.emit('close');
  }
}

function openSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
