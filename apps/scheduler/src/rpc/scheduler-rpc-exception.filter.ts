import { ArgumentsHost, Catch } from '@nestjs/common';
import { asDatabaseUnavailable } from '@kiln/db';
import { KilnRpcExceptionFilter } from '@kiln/messaging';
import { Observable } from 'rxjs';

/**
 * The scheduler's NATS handlers' one error exit: a Postgres outage (refused, dropped or stalled connection) travels
 * as `unavailable` with Retry-After, which the gateway answers as 503; everything else as KilnRpcExceptionFilter does.
 */
@Catch()
export class SchedulerRpcExceptionFilter extends KilnRpcExceptionFilter {
  override catch(exception: unknown, host: ArgumentsHost): Observable<never> {
    return super.catch(asDatabaseUnavailable(exception) ?? exception, host);
  }
}
