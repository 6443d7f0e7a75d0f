import { ErrorCode, HTTP_STATUS_BY_ERROR_CODE, isErrorCode } from './error-codes';

/**
 * The public error body. `code` is the HTTP status (E2B's API contract),
 * `error_code` the machine-readable reason.
 */
export interface ApiErrorBody {
  code: number;
  message: string;
  error_code: ErrorCode;
}

/** The serialisable form that travels between services (NATS replies, job results). */
export interface ErrorPayload {
  errorCode: ErrorCode;
  message: string;
  /** Seconds the caller should wait before retrying (placement exhaustion, rate limits). */
  retryAfterSeconds?: number;
}

export class KilnError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
    this.name = 'KilnError';
  }

  get httpStatus(): number {
    return HTTP_STATUS_BY_ERROR_CODE[this.code];
  }

  toBody(): ApiErrorBody {
    return { code: this.httpStatus, message: this.message, error_code: this.code };
  }

  toPayload(): ErrorPayload {
    return { errorCode: this.code, message: this.message, retryAfterSeconds: this.retryAfterSeconds };
  }

  static fromPayload(payload: ErrorPayload): KilnError {
    return new KilnError(payload.errorCode, payload.message, payload.retryAfterSeconds);
  }

  static isPayload(value: unknown): value is ErrorPayload {
    return (
      typeof value === 'object' &&
      value !== null &&
      isErrorCode((value as ErrorPayload).errorCode) &&
      typeof (value as ErrorPayload).message === 'string'
    );
  }

  static notFound(what: string): KilnError {
    return new KilnError(ErrorCode.NotFound, `${what} not found`);
  }

  static invalid(message: string): KilnError {
    return new KilnError(ErrorCode.InvalidArgument, message);
  }
}
