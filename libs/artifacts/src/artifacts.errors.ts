import { ErrorCode, KilnError } from '@kiln/contracts';

/** An artifact key outside the store's naming rules (path traversal, empty segments). */
export class InvalidArtifactKeyError extends KilnError {
  constructor(key: string) {
    super(ErrorCode.InvalidArgument, `invalid artifact key ${JSON.stringify(key)}`);
  }
}

export class ArtifactNotFoundError extends KilnError {
  constructor(key: string) {
    super(ErrorCode.NotFound, `artifact ${key} not found`);
  }
}

/** The bytes read do not hash to what was recorded (or expected) for the artifact. */
export class ArtifactIntegrityError extends KilnError {
  constructor(message: string) {
    super(ErrorCode.Internal, message);
  }
}

/** A write larger than the caller allowed. */
export class ArtifactTooLargeError extends KilnError {
  constructor(key: string, limitBytes: number) {
    super(ErrorCode.InvalidArgument, `artifact ${key} exceeds ${limitBytes} bytes`);
  }
}
