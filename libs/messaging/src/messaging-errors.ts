import { ErrorCode, KilnError } from '@kiln/contracts';

/** Seconds a caller is told to wait when NATS or the service behind a subject is unavailable. */
export const MESSAGING_RETRY_AFTER_SECONDS = 3;

/**
 * A request could not be delivered or its reply cannot arrive: NATS is down or reconnecting, no service subscribes
 * to the subject, or the service did not answer in time. `unavailable` (503 with Retry-After at the gateway).
 */
export class MessagingUnavailableError extends KilnError {
  constructor(message: string, retryAfterSeconds = MESSAGING_RETRY_AFTER_SECONDS) {
    super(ErrorCode.Unavailable, message, retryAfterSeconds);
  }
}
