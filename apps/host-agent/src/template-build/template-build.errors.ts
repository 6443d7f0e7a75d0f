import { ErrorCode, KilnError } from '@kiln/contracts';

/**
 * Infrastructure failures of a template build: the gRPC call ends with the error's status and the builder may retry
 * the build. What the user's definition did wrong is never one of these but a BuildStepFailed event (UserStepError).
 */
export class TemplateBuildError extends KilnError {
  constructor(code: ErrorCode, message: string) {
    super(code, message);
    this.name = new.target.name;
  }
}

/** The request itself is malformed (ids, unknown step type, wrong argument count): no step was run. */
export class InvalidBuildRequestError extends TemplateBuildError {
  constructor(message: string) {
    super(ErrorCode.InvalidArgument, message);
  }
}

/** The same build (template and build id) is already running on this host. */
export class BuildAlreadyRunningError extends TemplateBuildError {
  constructor(message: string) {
    super(ErrorCode.Conflict, message);
  }
}

/** The build VM did not come up, a host tool failed, the base runtime is missing. */
export class BuildInfrastructureError extends TemplateBuildError {
  constructor(message: string) {
    super(ErrorCode.Internal, message);
  }
}

/** The base image cannot be prepared on this host (no base-layer support, registry unreachable). */
export class BaseLayerUnavailableError extends TemplateBuildError {
  constructor(message: string) {
    super(ErrorCode.FailedPrecondition, message);
  }
}

/** The build was cancelled (the caller went away); everything it made is removed. */
export class BuildCancelledError extends TemplateBuildError {
  constructor(reason = 'the build was cancelled') {
    super(ErrorCode.Unavailable, reason);
  }
}

/**
 * A step of the user's definition failed (non-zero exit, a COPY source that is not in the archive, a ready command
 * that never succeeds): reported as BuildStepFailed and never retried. Not a KilnError on purpose: it must not reach
 * the gRPC status path.
 */
export class UserStepError extends Error {
  constructor(
    readonly step: number,
    message: string,
  ) {
    super(message);
    this.name = 'UserStepError';
  }
}
