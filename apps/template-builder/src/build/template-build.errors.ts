import { ErrorCode, KilnError } from '@kiln/contracts';

/**
 * How a build attempt ended when it did not end ready. The worker maps each onto BullMQ: `retryable` failures (the
 * infrastructure's) go back to the queue with backoff; the others end the build at once.
 */
export abstract class TemplateBuildFailure extends KilnError {
  abstract readonly retryable: boolean;
  /** The step the build failed in (E2B BuildStatusReason.step), when one is to blame. */
  readonly step?: string;
}

/** A user step failed (non-zero exit, missing file, ready command never succeeded): never retried. */
export class BuildStepFailedError extends TemplateBuildFailure {
  readonly retryable = false;
  constructor(
    override readonly step: string,
    message: string,
  ) {
    super(ErrorCode.FailedPrecondition, message);
  }
}

/** The stored definition cannot be run (a base or COPY archive gone since the gateway checked it): never retried. */
export class BuildDefinitionError extends TemplateBuildFailure {
  readonly retryable = false;
  constructor(
    message: string,
    override readonly step?: string,
  ) {
    super(ErrorCode.InvalidArgument, message);
  }
}

/** The build was cancelled (the gateway's cancel, or cancelRequested seen before it started): never retried. */
export class BuildCancelledError extends TemplateBuildFailure {
  readonly retryable = false;
  constructor() {
    super(ErrorCode.Conflict, 'cancelled');
  }
}

/** No host could take the build, the host call failed or the host vanished mid-build: retried. */
export class BuildInfrastructureError extends TemplateBuildFailure {
  readonly retryable = true;
  constructor(message: string) {
    super(ErrorCode.Unavailable, message);
  }
}

/** A host refused the request in a way another attempt would not change (bad request, not allowed): not retried. */
export class BuildRejectedError extends TemplateBuildFailure {
  readonly retryable = false;
  constructor(message: string) {
    super(ErrorCode.Internal, message);
  }
}

/** The build ran past BUILD_TIMEOUT_SECONDS (a step that never ends): stopped, not retried. */
export class BuildTimeoutError extends TemplateBuildFailure {
  readonly retryable = false;
  constructor(
    timeoutSeconds: number,
    override readonly step?: string,
  ) {
    super(ErrorCode.Timeout, `the build did not finish within ${timeoutSeconds} s${step !== undefined ? ` (stopped in step ${step})` : ''}`);
  }
}
