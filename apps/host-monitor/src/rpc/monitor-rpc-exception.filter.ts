import { ArgumentsHost, Catch } from '@nestjs/common';
import { asDatabaseUnavailable } from '@kiln/db';
import { KilnRpcExceptionFilter } from '@kiln/messaging';
import { Observable } from 'rxjs';

/**
 * The monitor's request handlers' one error exit: a Postgres outage travels as `unavailable` with Retry-After (an
 * agent retries its registration, the gateway answers 503); everything else as KilnRpcExceptionFilter does.
 */
@Catch()
export class MonitorRpcExceptionFilter extends KilnRpcExceptionFilter {
  override catch(exception: unknown, host: ArgumentsHost): Observable<never> {
    return super.catch(asDatabaseUnavailable(exception) ?? exception, host);
  }
}
