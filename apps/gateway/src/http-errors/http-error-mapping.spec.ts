import 'reflect-metadata';
import { BadRequestException, NotFoundException } from '@nestjs/common';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { DEFAULT_RETRY_AFTER_SECONDS, toHttpError } from './http-error-mapping';

describe('toHttpError', () => {
  it('keeps a KilnError as is and adds Retry-After for capacity exhaustion', () => {
    expect(toHttpError(new KilnError(ErrorCode.ResourceExhausted, 'full'))).toEqual({
      status: 503,
      body: { code: 503, message: 'full', error_code: 'resource_exhausted' },
      retryAfterSeconds: DEFAULT_RETRY_AFTER_SECONDS,
    });
    expect(toHttpError(new KilnError(ErrorCode.ResourceExhausted, 'full', 2)).retryAfterSeconds).toBe(2);
    expect(toHttpError(KilnError.notFound('sandbox x'))).toMatchObject({ status: 404, body: { code: 404, error_code: 'not_found' } });
  });

  it('answers a feature this deployment does not implement with 501, no Retry-After (retrying will not help)', () => {
    expect(toHttpError(new KilnError(ErrorCode.NotImplemented, 'POST /x is not supported'))).toEqual({
      status: 501,
      body: { code: 501, message: 'POST /x is not supported', error_code: 'not_implemented' },
      retryAfterSeconds: undefined,
    });
  });

  it('maps Nest and Fastify 4xx errors to the error body', () => {
    expect(toHttpError(new NotFoundException('Cannot GET /x')).body).toEqual({ code: 404, message: 'Cannot GET /x', error_code: 'not_found' });
    expect(toHttpError(new BadRequestException(['a is bad', 'b is bad'])).body.message).toBe('a is bad; b is bad');
    const tooLarge = Object.assign(new Error('Request body is too large'), { statusCode: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE' });
    expect(toHttpError(tooLarge)).toEqual({ status: 413, body: { code: 413, message: 'request body is too large', error_code: 'payload_too_large' } });
    expect(toHttpError(new SyntaxError('Unexpected end of JSON input')).status).toBe(400);
  });

  it('hides the details of anything unexplained behind a 500', () => {
    expect(toHttpError(new Error('secret connection string'))).toEqual({ status: 500, body: { code: 500, message: 'internal error', error_code: 'internal' } });
    expect(toHttpError(Object.assign(new Error('x'), { statusCode: 502 })).status).toBe(500);
  });
});

describe('toHttpError for dependency outages', () => {
  it('answers 503 with Retry-After for an unreachable database, without its details leaking as a 500', () => {
    const prismaError = Object.assign(new Error("Invalid `prisma.apiKey.findUnique()` invocation:\n\nCan't reach database server at 127.0.0.1:5432"), {
      code: 'P1001',
      meta: { driverAdapterError: { cause: { kind: 'DatabaseNotReachable' } } },
    });
    expect(toHttpError(prismaError)).toEqual({
      status: 503,
      body: { code: 503, message: "database unavailable: Can't reach database server at 127.0.0.1:5432", error_code: 'unavailable' },
      retryAfterSeconds: 5,
    });
    expect(toHttpError(new Error('Query read timeout')).status).toBe(503);
  });

  it('always gives an unavailable answer a Retry-After', () => {
    expect(toHttpError(new KilnError(ErrorCode.Unavailable, 'NATS is unreachable')).retryAfterSeconds).toBe(DEFAULT_RETRY_AFTER_SECONDS);
    expect(toHttpError(new KilnError(ErrorCode.Unavailable, 'x', 3)).retryAfterSeconds).toBe(3);
  });
});
