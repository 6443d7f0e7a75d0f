import { Metadata } from '@grpc/grpc-js';
import { ArgumentsHost, Catch, Logger, RpcExceptionFilter } from '@nestjs/common';
import { ErrorCode, GRPC_STATUS_BY_ERROR_CODE, KilnError } from '@kiln/contracts';
import { Observable, throwError } from 'rxjs';

/**
 * Trailing metadata key with a KilnError's retryAfterSeconds (whole seconds): the status alone cannot carry it, and
 * the control plane passes it on as the HTTP Retry-After.
 */
export const RETRY_AFTER_METADATA_KEY = 'retry-after';

/** Turns domain errors into gRPC status codes; anything unexpected is INTERNAL and logged here. */
@Catch()
export class GrpcExceptionFilter implements RpcExceptionFilter<unknown> {
  private readonly logger = new Logger('grpc');

  catch(exception: unknown, _host: ArgumentsHost): Observable<never> {
    const error = exception instanceof KilnError ? exception : new KilnError(ErrorCode.Internal, 'internal error');
    if (!(exception instanceof KilnError)) this.logger.error(exception instanceof Error ? exception.stack : String(exception));
    const metadata = new Metadata();
    if (error.retryAfterSeconds !== undefined) metadata.set(RETRY_AFTER_METADATA_KEY, String(Math.max(0, Math.ceil(error.retryAfterSeconds))));
    return throwError(() => ({ code: GRPC_STATUS_BY_ERROR_CODE[error.code], message: error.message, details: error.message, metadata }));
  }
}
