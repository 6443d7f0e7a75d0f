/** Every failure the egress proxy reports is one of these. */
export class EgressProxyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The native addon that reads SO_ORIGINAL_DST is not built or does not load (`npx nx run host-agent:build-native`). */
export class OriginalDestinationUnavailableError extends EgressProxyError {}

/** The proxy could not listen on its configured address and port. */
export class EgressProxyListenError extends EgressProxyError {}

/** The proxy's options are unusable. */
export class EgressProxyConfigError extends EgressProxyError {}
