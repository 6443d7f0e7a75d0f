import { ErrorCode, KilnError } from '@kiln/contracts';

/** Seconds a caller is told to wait when the limiter's Redis is unreachable. */
export const RATE_LIMIT_UNAVAILABLE_RETRY_SECONDS = 5;

/** The limiter could not count (Redis unreachable) and fails closed (RATE_LIMIT_FAIL_OPEN=false): 503 + Retry-After. */
export class RateLimitUnavailableError extends KilnError {
  constructor() {
    super(ErrorCode.Unavailable, 'rate limiting is unavailable (its Redis cannot be reached): try again shortly', RATE_LIMIT_UNAVAILABLE_RETRY_SECONDS);
    this.name = 'RateLimitUnavailableError';
  }
}

/** The client address sent too many requests without a valid API key: 429 + Retry-After. */
export class UnauthenticatedRateLimitedError extends KilnError {
  constructor(limitPerMinute: number, retryAfterSeconds: number) {
    super(
      ErrorCode.RateLimited,
      `rate limit exceeded: at most ${limitPerMinute} requests per minute without a valid API key from one client address`,
      retryAfterSeconds,
    );
    this.name = 'UnauthenticatedRateLimitedError';
  }
}
