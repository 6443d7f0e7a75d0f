/**
 * Machine-readable error codes shared by every service. The HTTP status and the
 * gRPC status for each code are fixed here so that an error crossing
 * gateway → scheduler (NATS) → host agent (gRPC) keeps its meaning.
 */
export enum ErrorCode {
  InvalidArgument = 'invalid_argument',
  Unauthenticated = 'unauthenticated',
  PermissionDenied = 'permission_denied',
  NotFound = 'not_found',
  Conflict = 'conflict',
  AlreadyExists = 'already_exists',
  FailedPrecondition = 'failed_precondition',
  PayloadTooLarge = 'payload_too_large',
  RateLimited = 'rate_limited',
  /** A team's quota (concurrent sandboxes, vCPUs, memory) would be exceeded: 429 like E2B's concurrency limit. */
  QuotaExceeded = 'quota_exceeded',
  ResourceExhausted = 'resource_exhausted',
  Unavailable = 'unavailable',
  Timeout = 'timeout',
  /** A documented E2B route or option this deployment does not implement yet (HTTP 501, gRPC UNIMPLEMENTED). */
  NotImplemented = 'not_implemented',
  Internal = 'internal',
}

export const HTTP_STATUS_BY_ERROR_CODE: Record<ErrorCode, number> = {
  [ErrorCode.InvalidArgument]: 400,
  [ErrorCode.Unauthenticated]: 401,
  [ErrorCode.PermissionDenied]: 403,
  [ErrorCode.NotFound]: 404,
  [ErrorCode.Conflict]: 409,
  [ErrorCode.AlreadyExists]: 409,
  [ErrorCode.FailedPrecondition]: 400,
  [ErrorCode.PayloadTooLarge]: 413,
  [ErrorCode.RateLimited]: 429,
  [ErrorCode.QuotaExceeded]: 429,
  [ErrorCode.ResourceExhausted]: 503,
  [ErrorCode.Unavailable]: 503,
  [ErrorCode.Timeout]: 504,
  [ErrorCode.NotImplemented]: 501,
  [ErrorCode.Internal]: 500,
};

/** gRPC status numbers (google.rpc.Code); kept numeric so contracts need no grpc dependency. */
export const GRPC_STATUS_BY_ERROR_CODE: Record<ErrorCode, number> = {
  [ErrorCode.InvalidArgument]: 3,
  [ErrorCode.Unauthenticated]: 16,
  [ErrorCode.PermissionDenied]: 7,
  [ErrorCode.NotFound]: 5,
  [ErrorCode.Conflict]: 10,
  [ErrorCode.AlreadyExists]: 6,
  [ErrorCode.FailedPrecondition]: 9,
  [ErrorCode.PayloadTooLarge]: 8,
  [ErrorCode.RateLimited]: 8,
  [ErrorCode.QuotaExceeded]: 8,
  [ErrorCode.ResourceExhausted]: 8,
  [ErrorCode.Unavailable]: 14,
  [ErrorCode.Timeout]: 4,
  [ErrorCode.NotImplemented]: 12,
  [ErrorCode.Internal]: 13,
};

const ERROR_CODE_BY_GRPC_STATUS: Record<number, ErrorCode> = {
  3: ErrorCode.InvalidArgument,
  4: ErrorCode.Timeout,
  5: ErrorCode.NotFound,
  6: ErrorCode.AlreadyExists,
  7: ErrorCode.PermissionDenied,
  8: ErrorCode.ResourceExhausted,
  9: ErrorCode.FailedPrecondition,
  10: ErrorCode.Conflict,
  14: ErrorCode.Unavailable,
  16: ErrorCode.Unauthenticated,
};

export function errorCodeForGrpcStatus(status: number | undefined): ErrorCode {
  return (status !== undefined && ERROR_CODE_BY_GRPC_STATUS[status]) || ErrorCode.Internal;
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && (Object.values(ErrorCode) as string[]).includes(value);
}
