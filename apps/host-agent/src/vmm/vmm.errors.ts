/** Base class for failures of the VM layer, so callers can map them to one error code. */
export class VmmError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The spec handed to the driver is unusable (missing file, bad size, bad MAC...). */
export class InvalidVmSpecError extends VmmError {}

/** The VMM process could not be started or exited before it was ready. */
export class VmStartError extends VmmError {}

/** Every uid of the VMM range (KILN_VMM_UID_BASE/COUNT) is held by a live VMM. */
export class VmIdentityExhaustedError extends VmStartError {}

/** The VM is gone (exited or killed) and cannot take the requested action. */
export class VmNotRunningError extends VmmError {}

/** A state dir does not describe a live VM that can be re-attached. */
export class VmAdoptError extends VmmError {}

/** Saving or loading a snapshot failed. */
export class VmSnapshotError extends VmmError {}

export class QmpConnectionError extends VmmError {}

export class QmpCommandError extends VmmError {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly description: string,
  ) {
    super(`QMP ${command} failed: ${errorClass}: ${description}`);
  }
}
