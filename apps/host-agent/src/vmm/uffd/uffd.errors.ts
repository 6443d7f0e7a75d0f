import { VmStartError, VmmError } from '../vmm.errors';

/** A UFFD worker could not be started: it refused its snapshot or handshake setup, timed out, or never ran. */
export class UffdWorkerStartError extends VmStartError {
  constructor(
    message: string,
    /** The worker's one `kiln-uffd-worker: <reason>` stderr line, when it printed one. */
    readonly workerReason?: string,
    /** The worker's exit code (2 = it refused its inputs), when it exited. */
    readonly exitCode?: number | null,
  ) {
    super(message);
  }
}

/** A worker's stats could not be read (socket gone, timeout) or its JSON line is not the documented shape. */
export class UffdWorkerStatsError extends VmmError {}

/**
 * A recorded worker cannot be adopted: its pid is gone or now belongs to another process (its start ticks differ), or
 * the record holds no start ticks to check it by.
 */
export class UffdWorkerAdoptError extends VmmError {}
