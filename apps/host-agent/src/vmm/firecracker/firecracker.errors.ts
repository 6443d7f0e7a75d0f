import { VmmError, VmSnapshotError, VmStartError } from '../vmm.errors';

/**
 * KILN_VMM=firecracker on a host that cannot run it: names what is missing, in one line (the agent prints it and
 * refuses to start).
 */
export class FirecrackerUnavailableError extends VmmError {}

/** Firecracker answered an API call with a non-2xx status; `faultMessage` is its own explanation. */
export class FirecrackerApiError extends VmmError {
  constructor(
    readonly method: string,
    readonly path: string,
    readonly status: number,
    readonly faultMessage: string,
  ) {
    super(`Firecracker ${method} ${path} failed with ${status}: ${faultMessage || 'no fault_message'}`);
  }
}

/** The API socket could not be reached, or an exchange on it broke off or timed out. */
export class FirecrackerConnectionError extends VmmError {}

/**
 * The host agent's native addon data_extents.node (apps/host-agent/native, built by host-agent:build-native) is
 * missing or does not load: without it a Diff snapshot's sparse memory file cannot be read (see diff-memory.ts).
 */
export class DataExtentsUnavailableError extends VmSnapshotError {}

/**
 * A Diff snapshot's memory file or the changed pages it is merged onto could not be turned into memory.pages +
 * memory.index: unreadable, truncated, malformed index, or pages past what the index format can name.
 */
export class DiffMemoryConversionError extends VmSnapshotError {}

/**
 * A clone whose dirty-page log Firecracker already consumed (a snapshot was taken, but its pages could not be kept):
 * a later Diff would miss those pages, so the clone refuses further checkpoints.
 */
export class FirecrackerCheckpointBaseLostError extends VmSnapshotError {}

/** A start that failed: the VMM was killed; `cause` is what failed (often a FirecrackerApiError). */
export class FirecrackerStartError extends VmStartError {
  constructor(
    message: string,
    override readonly cause: unknown,
  ) {
    super(message);
  }
}
