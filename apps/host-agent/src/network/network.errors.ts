/** Every network slot failure the pool reports is one of these, so callers can map them to gRPC/HTTP statuses. */
export class NetworkSlotError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The configured maximum number of slots are all leased (or being prepared): the node is full. */
export class SlotsExhaustedError extends NetworkSlotError {
  constructor(readonly maxSlots: number) {
    super(`all ${maxSlots} network slots are in use`);
  }
}

/** The options are unusable (bad CIDR, prefix, counts) or collide with addresses already on the host. */
export class NetworkConfigError extends NetworkSlotError {}

/** acquire/release/adopt before init() finished, or after destroyAll(). */
export class SlotPoolNotReadyError extends NetworkSlotError {
  constructor(state: string) {
    super(`network slot pool is not ready (state: ${state})`);
  }
}

/** release() of a slot this pool does not currently lease out. */
export class SlotNotLeasedError extends NetworkSlotError {
  constructor(readonly index: number) {
    super(`network slot ${index} is not leased`);
  }
}

/** adopt() of an index whose namespace does not exist (or is broken beyond repair), or is outside the pool. */
export class SlotNotFoundError extends NetworkSlotError {
  constructor(
    readonly index: number,
    reason: string,
  ) {
    super(`network slot ${index} cannot be adopted: ${reason}`);
  }
}

/** adopt() of an index the pool already holds as a free, pre-created slot: no sandbox can be using it. */
export class SlotConflictError extends NetworkSlotError {
  constructor(readonly index: number) {
    super(`network slot ${index} is a free pooled slot, not one held by a sandbox`);
  }
}

/** An egress policy that is not a normalised EgressPolicy (bad entry, too many, not in normal form). */
export class InvalidEgressPolicyError extends NetworkSlotError {}

/** Domain rules on a pool with no egress proxy to enforce them (no proxy port configured). */
export class EgressProxyNotConfiguredError extends NetworkSlotError {
  constructor() {
    super('domain rules in allowOut need the egress proxy, which this pool was not configured with');
  }
}
