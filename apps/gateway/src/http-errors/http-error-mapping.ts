import { HttpException } from '@nestjs/common';
import { ApiErrorBody, ErrorCode, KilnError } from '@kiln/contracts';
import { asDatabaseUnavailable } from '@kiln/db';

/** What the gateway answers for a failed request: status, E2B's error body and an optional Retry-After. */
export interface HttpErrorResponse {
  status: number;
  body: ApiErrorBody;
  retryAfterSeconds?: number;
}

/** Seconds a client is told to wait when the platform is out of capacity or a dependency is down and no hint came. */
export const DEFAULT_RETRY_AFTER_SECONDS = 5;

/** Codes that mean "try again later": their answers always carry Retry-After. */
const RETRYABLE_CODES: ReadonlySet<ErrorCode> = new Set([ErrorCode.ResourceExhausted, ErrorCode.Unavailable]);

const ERROR_CODE_BY_HTTP_STATUS: Record<number, ErrorCode> = {
  400: ErrorCode.InvalidArgument,
  401: ErrorCode.Unauthenticated,
  403: ErrorCode.PermissionDenied,
  404: ErrorCode.NotFound,
  405: ErrorCode.NotFound,
  409: ErrorCode.Conflict,
  413: ErrorCode.PayloadTooLarge,
  415: ErrorCode.InvalidArgument,
  429: ErrorCode.RateLimited,
  503: ErrorCode.Unavailable,
  504: ErrorCode.Timeout,
};

function errorCodeForStatus(status: number): ErrorCode {
  return ERROR_CODE_BY_HTTP_STATUS[status] ?? (status < 500 ? ErrorCode.InvalidArgument : ErrorCode.Internal);
}

/** Errors Fastify raises itself (body parsing, content type, limits) carry a 4xx `statusCode` and an FST_ code. */
interface FrameworkError {
  statusCode: number;
  message: string;
  code?: string;
}

function isFrameworkError(value: unknown): value is FrameworkError {
  if (!(value instanceof Error)) return false;
  const status = (value as { statusCode?: unknown }).statusCode;
  return typeof status === 'number' && status >= 400 && status < 500;
}

function messageOfHttpException(exception: HttpException): string {
  const response = exception.getResponse();
  if (typeof response === 'string') return response;
  const message = (response as { message?: unknown }).message;
  if (Array.isArray(message)) return message.join('; ');
  if (typeof message === 'string') return message;
  return exception.message;
}

function describeFrameworkError(error: FrameworkError): string {
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return 'request body is too large';
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return 'unsupported content type: send application/json';
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return 'request body length does not match Content-Length';
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return "request body is empty but content-type is 'application/json'";
    case 'FST_ERR_BAD_URL':
      return 'request path is not a valid URL (bad percent-encoding)';
    default:
      return error.message;
  }
}

/**
 * Maps anything a request can fail with to E2B's error body. Only errors the
 * gateway cannot explain become 500, and their details never reach the client.
 */
export function toHttpError(thrown: unknown): HttpErrorResponse {
  // The gateway reads Postgres itself (API keys, templates): an outage there is a 503 like any other dependency's.
  const exception = asDatabaseUnavailable(thrown) ?? thrown;
  if (exception instanceof KilnError) {
    const retryAfterSeconds = RETRYABLE_CODES.has(exception.code)
      ? (exception.retryAfterSeconds ?? DEFAULT_RETRY_AFTER_SECONDS)
      : exception.retryAfterSeconds;
    return { status: exception.httpStatus, body: exception.toBody(), retryAfterSeconds };
  }
  if (exception instanceof HttpException) {
    const status = exception.getStatus();
    if (status >= 500) return internalError();
    const code = errorCodeForStatus(status);
    // Nest's 404 for an unknown route says "Cannot GET /x"; keep it, it names the route.
    return { status, body: { code: status, message: messageOfHttpException(exception), error_code: code } };
  }
  if (exception instanceof SyntaxError) {
    return { status: 400, body: { code: 400, message: `malformed JSON body: ${exception.message}`, error_code: ErrorCode.InvalidArgument } };
  }
  if (isFrameworkError(exception)) {
    const status = exception.statusCode;
    return { status, body: { code: status, message: describeFrameworkError(exception), error_code: errorCodeForStatus(status) } };
  }
  return internalError();
}

function internalError(): HttpErrorResponse {
  return { status: 500, body: { code: 500, message: 'internal error', error_code: ErrorCode.Internal } };
}
