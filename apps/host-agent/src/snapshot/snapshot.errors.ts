/** Base class for template snapshot failures. */
export class SnapshotError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The template VM never answered its agent health check while building the snapshot. */
export class TemplateBootError extends SnapshotError {}

/** A snapshot's files do not match its manifest (truncated, modified, or missing). */
export class SnapshotIntegrityError extends SnapshotError {}

/** The template has no snapshot yet (callers may create one). */
export class SnapshotMissingError extends SnapshotError {}

/** The snapshot was written in an older layout; it is recreated on next use. */
export class SnapshotOutdatedError extends SnapshotError {}

/**
 * A create needs a template build whose snapshot is not usable yet: its last attempt failed (and is retried with
 * backoff), or it is still being built and the create could not wait longer. `reason` is the short cause a caller
 * can act on; `retryAfterSeconds` is when trying again makes sense.
 */
export class TemplateNotReadyError extends SnapshotError {
  constructor(
    readonly templateId: string,
    readonly reason: string,
    readonly retryAfterSeconds: number,
  ) {
    super(`template ${templateId} is not ready: ${reason}`);
  }
}

/**
 * A built template's ready command never exited 0 within the bound (or its start command could not be launched):
 * the template's own definition is at fault, so the build reports it as a failed step, with the commands' output.
 */
export class TemplateReadyError extends SnapshotError {
  constructor(
    message: string,
    /** The last lines the start and ready commands printed. */
    readonly output: string,
  ) {
    super(message);
  }
}
