import { ArgumentsHost, Catch, ExceptionFilter, Logger } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ErrorCode } from '@kiln/contracts';
import { toHttpError } from './http-error-mapping';

/**
 * The one place a failed request becomes a response: `{code, message, error_code}`
 * with the right status, for Nest exceptions, scheduler errors and Fastify's own
 * (bad JSON, body too large, wrong content type) alike.
 */
@Catch()
export class ApiExceptionFilter implements ExceptionFilter {
  private readonly logger = new Logger('http');

  catch(exception: unknown, host: ArgumentsHost): void {
    const reply = host.switchToHttp().getResponse<FastifyReply>();
    const request = host.switchToHttp().getRequest<FastifyRequest>();
    sendHttpError(reply, exception, this.logger, request);
  }
}

export function sendHttpError(reply: FastifyReply, exception: unknown, logger: Logger, request?: FastifyRequest): void {
  const error = toHttpError(exception);
  if (error.status >= 500) {
    const what = request ? `${request.method} ${request.url}` : 'request';
    // Expected outages (capacity, scheduler down) are one line; only unexplained failures carry a stack. A route this
    // deployment does not implement (501) is the caller's request, not an outage: debug only.
    if (error.body.error_code === ErrorCode.NotImplemented) {
      logger.debug(`${what} answered ${error.status}: ${error.body.message}`);
    } else if (error.body.error_code === 'internal') {
      logger.error(`${what} failed: ${exception instanceof Error ? (exception.stack ?? exception.message) : String(exception)}`);
    } else {
      logger.warn(`${what} answered ${error.status}: ${error.body.message}`);
    }
  }
  if (reply.sent) return;
  if (error.retryAfterSeconds !== undefined) reply.header('Retry-After', String(Math.max(0, Math.ceil(error.retryAfterSeconds))));
  void reply.status(error.status).header('Content-Type', 'application/json; charset=utf-8').send(error.body);
}
