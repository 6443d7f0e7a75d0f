/**
 * Failures while preparing a template build's base layer (build step "0"). Two families, because the build treats
 * them differently:
 * - BaseLayerUserError: the definition names something that cannot be used (a malformed or unknown image, refused
 *   credentials, an unreachable registry, a suite this host cannot build). The build fails at step "0" with this
 *   message, and retrying it cannot help.
 * - BaseLayerInfrastructureError: this host failed (a tool missing or crashing, the `base` template whose runtime is
 *   copied is absent, the disk is full). The job may be retried, here or on another host.
 * A cancelled prepare rejects with BaseLayerCancelledError (neither: nobody retries what was cancelled).
 */
export class BaseLayerError extends Error {
  /** E2B's BuildStatusReason.step of every base layer failure. */
  readonly step = '0';

  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

export class BaseLayerUserError extends BaseLayerError {}

/** The reference is not a valid image reference (`name[:tag][@sha256:digest]`). */
export class InvalidImageReferenceError extends BaseLayerUserError {}

/** The registry answered that the repository, tag or digest does not exist. */
export class ImageNotFoundError extends BaseLayerUserError {}

/** The registry refused the credentials given (or asked for credentials and none were given). */
export class RegistryAuthError extends BaseLayerUserError {}

/** The registry could not be reached (unknown host, connection refused, TLS failure, timeout). */
export class RegistryUnreachableError extends BaseLayerUserError {}

/** The image or suite is not something this host can build a base from (no Ubuntu mirror, unknown suite, no layers). */
export class UnsupportedBaseImageError extends BaseLayerUserError {}

export class BaseLayerInfrastructureError extends BaseLayerError {}

/** The `base` template, whose kernel runtime (guest agent, node, init) every base layer gets, is missing or unusable. */
export class RuntimeSourceError extends BaseLayerInfrastructureError {}

/** A host tool (skopeo, umoci, mmdebstrap, mke2fs, debugfs, patchelf) failed for a reason that is not the user's. */
export class BaseLayerToolError extends BaseLayerInfrastructureError {}

export class BaseLayerCancelledError extends BaseLayerError {
  constructor(message = 'base layer preparation was cancelled') {
    super(message);
  }
}
