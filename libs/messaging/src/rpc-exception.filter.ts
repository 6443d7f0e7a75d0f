import { ArgumentsHost, Catch, Logger, RpcExceptionFilter } from '@nestjs/common';
import { RpcException } from '@nestjs/microservices';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { Observable, throwError } from 'rxjs';

/**
 * Makes every NATS handler failure travel as an ErrorPayload, so the caller's
 * MessagingClient rebuilds the same KilnError. Unexpected errors become `internal`
 * and are logged here rather than leaking stack traces to callers.
 */
@Catch()
export class KilnRpcExceptionFilter implements RpcExceptionFilter<unknown> {
  private readonly logger = new Logger('rpc');

  catch(exception: unknown, _host: ArgumentsHost): Observable<never> {
    if (exception instanceof KilnError) return throwError(() => exception.toPayload());
    if (exception instanceof RpcException) {
      const inner = exception.getError();
      if (KilnError.isPayload(inner)) return throwError(() => inner);
    }
    this.logger.error(exception instanceof Error ? exception.stack : String(exception));
    return throwError(() => new KilnError(ErrorCode.Internal, 'internal error').toPayload());
  }
}
