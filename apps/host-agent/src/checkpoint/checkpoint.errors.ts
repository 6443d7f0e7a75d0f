/** Base class of checkpoint (pause, fork, named snapshot) artifact failures. */
export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** An artifact does not match its manifest (missing, truncated, modified): it is refused, never restored. */
export class CheckpointCorruptError extends CheckpointError {}

/** No checkpoint with that id on this host. */
export class CheckpointNotFoundError extends CheckpointError {}

/** A checkpoint id that is not ours to make a path of. */
export class InvalidCheckpointIdError extends CheckpointError {}
