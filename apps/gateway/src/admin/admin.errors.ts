import { ErrorCode, KilnError } from '@kiln/contracts';

/** No KILN_ADMIN_TOKEN is configured: every admin route is refused, whatever the request carries. */
export class AdminApiDisabledError extends KilnError {
  constructor() {
    super(ErrorCode.PermissionDenied, 'the admin API is disabled: KILN_ADMIN_TOKEN is not set');
  }
}

/** The request has no X-Admin-Token, or one that is not this deployment's. */
export class AdminTokenRejectedError extends KilnError {
  constructor(missing: boolean) {
    super(ErrorCode.Unauthenticated, missing ? 'missing admin token: send it in the X-Admin-Token header' : 'invalid admin token');
  }
}

/** A node (host) id the host monitor does not know, or one in a cluster this deployment is not. */
export class NodeNotFoundError extends KilnError {
  constructor(nodeId: string) {
    super(ErrorCode.NotFound, `node ${nodeId} not found`);
  }
}
