/** Base class for failures of the agent's link to the control plane (registration with the host monitor). */
export class ControlPlaneLinkError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/**
 * The agent cannot register as it is configured: no stored credential and no join token, or the monitor refused the
 * credential and there is no join token to fall back to. Only an operator can fix it (mint a join token for this host
 * and set KILN_JOIN_TOKEN), so the agent keeps running and retrying, saying so in its log.
 */
export class RegistrationRefusedError extends ControlPlaneLinkError {}

/** The monitor answered a registration with `accepted: false`. */
export class RegistrationNotAcceptedError extends ControlPlaneLinkError {}
