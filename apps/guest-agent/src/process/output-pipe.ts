import type { Readable } from 'node:stream';
import type { PipeCalls } from '../runtime/guest-kernel';

/** The internals of a child's stdio stream this module reads: libuv's pipe handle and its descriptor. */
interface PipeStreamInternals {
  _handle?: { fd?: number } | null;
}

/**
 * One output pipe (stdout or stderr) of a command, read until the command has exited and everything it wrote
 * before exiting has been delivered: then the pipe is "settled".
 *
 * A command's end does not wait for EOF. EOF comes only when every process holding the pipe's write end has let go,
 * and a `server &` the command started holds it as long as it runs. envd semantics are that a command is over when
 * its own process exits. What it wrote before that is either read already (and maybe still buffered in the stream)
 * or waiting in the pipe, and FIONREAD says exactly how much is waiting; that many bytes are delivered after the
 * exit, then the pipe is settled. Whatever comes later is a background process's and is dropped, but the pipe keeps
 * being read to EOF, so such a process neither blocks on a full pipe nor dies of SIGPIPE on its next write.
 */
export class OutputPipe {
  /** Bytes still to deliver once the command has exited; undefined while it runs or when they cannot be counted. */
  private owed: number | undefined;
  private settled = false;
  private lastDataAt = Date.now();

  constructor(
    private readonly stream: Readable,
    private readonly deliver: (data: Buffer) => void,
    private readonly onSettled: () => void,
  ) {
    stream.on('data', (chunk: Buffer) => this.receive(chunk));
    // EOF: every writer is gone, so everything there was to read has been delivered.
    stream.once('end', () => this.settle());
    // A read error destroys the stream; nothing more will come.
    stream.once('close', () => this.settle());
    stream.on('error', () => undefined);
  }

  get isSettled(): boolean {
    return this.settled;
  }

  /** How long no data has arrived, for the fallback when the owed bytes cannot be counted. */
  quietForMs(now: number): number {
    return now - this.lastDataAt;
  }

  /** Backpressure from a slow subscriber. A settled pipe is never paused: nobody reads what it still carries. */
  pause(): void {
    if (!this.settled) this.stream.pause();
  }

  resume(): void {
    this.stream.resume();
  }

  /**
   * The command has exited: count what it wrote and was not delivered yet (buffered in the stream plus waiting in
   * the pipe). Returns false when that cannot be counted (no addon, the descriptor already gone); the caller then
   * settles the pipe by its fallback.
   */
  countOwedAtExit(pipes: PipeCalls | undefined): boolean {
    if (this.settled) return true;
    const fd = (this.stream as unknown as PipeStreamInternals)._handle?.fd;
    if (!pipes || typeof fd !== 'number' || fd < 0) return false;
    let waiting: number;
    try {
      waiting = pipes.pipeBytesAvailable(fd);
    } catch {
      return false;
    }
    this.owed = this.stream.readableLength + waiting;
    if (this.owed === 0) this.settle();
    return true;
  }

  /** Done: later data is read and dropped. */
  settle(): void {
    if (this.settled) return;
    this.settled = true;
    this.owed = 0;
    this.stream.resume();
    this.onSettled();
  }

  private receive(chunk: Buffer): void {
    this.lastDataAt = Date.now();
    if (this.settled) return;
    if (this.owed === undefined) {
      this.deliver(chunk);
      return;
    }
    // A read can return the command's last bytes together with a background process's first ones.
    const take = Math.min(chunk.length, this.owed);
    if (take > 0) this.deliver(take === chunk.length ? chunk : chunk.subarray(0, take));
    this.owed -= take;
    if (this.owed === 0) this.settle();
  }
}
