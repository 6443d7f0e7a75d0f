import { ErrorCode, KilnError } from '@kiln/contracts';

/** A registration about another host than the one its subject names (only the subject is vouched for by NATS). */
export class RegistrationForOtherHostError extends KilnError {
  constructor() {
    super(ErrorCode.PermissionDenied, 'a host registers only itself, on its own subject');
  }
}

export class InvalidRegistrationError extends KilnError {
  constructor(detail: string) {
    super(ErrorCode.InvalidArgument, `invalid host registration: ${detail}`);
  }
}

/** Neither a valid credential nor a usable join token: the agent needs a (new) join token. */
export class RegistrationRejectedError extends KilnError {
  constructor(reason: string) {
    super(ErrorCode.Unauthenticated, reason);
  }
}

export class InvalidJoinTokenRequestError extends KilnError {
  constructor(detail: string) {
    super(ErrorCode.InvalidArgument, detail);
  }
}
