/** Every failure RootfsLayers reports on purpose is one of these, so callers can map them to gRPC/HTTP statuses. */
export class RootfsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The request itself is malformed (sandbox id, directory, layer object). */
export class InvalidLayerRequestError extends RootfsError {}

export class SourceImageNotFoundError extends RootfsError {
  constructor(readonly path: string) {
    super(`source image ${path} does not exist or is not a regular file`);
  }
}

/** The declared format of the source disagrees with its contents (e.g. "raw" for a file with a qcow2 header). */
export class SourceFormatMismatchError extends RootfsError {
  constructor(
    readonly path: string,
    declared: string,
    actual: string,
  ) {
    super(`source image ${path} was declared ${declared} but is ${actual}`);
  }
}

/** A layer for this sandbox already exists; it is never overwritten, since it holds the sandbox's data. */
export class LayerExistsError extends RootfsError {
  constructor(readonly path: string) {
    super(`rootfs layer ${path} already exists`);
  }
}

/** The configured driver cannot work for this source/destination (e.g. reflink on a filesystem without it). */
export class RootfsDriverUnavailableError extends RootfsError {}
