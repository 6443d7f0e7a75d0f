import { ErrorCode, KilnError } from '@kiln/contracts';

/** The monitor knows no host by this id (never registered, or removed). */
export class HostNotFoundError extends KilnError {
  constructor(hostId: string) {
    super(ErrorCode.NotFound, `host ${hostId} is not in the fleet`);
  }
}

/** Removing a host that still runs sandboxes would orphan them: drain it first (or wait until it is dead). */
export class HostBusyError extends KilnError {
  constructor(hostId: string, sandboxes: number) {
    super(ErrorCode.Conflict, `host ${hostId} is live and reports ${sandboxes} sandbox(es): drain it before removing it`);
  }
}
