import { Inject, Injectable, OnApplicationShutdown } from '@nestjs/common';
import { ClientProxy } from '@nestjs/microservices';
import { EmptyResponseException } from '@nestjs/microservices/errors/empty-response.exception';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { TimeoutError, firstValueFrom, timeout } from 'rxjs';
import { EventOf, EventSubject, ReplyOf, RequestOf, RequestSubject } from './subjects';

export const NATS_CLIENT_PROXY = Symbol('NATS_CLIENT_PROXY');
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

/**
 * Typed request/reply and events over NATS. Errors thrown by a handler arrive as
 * KilnError with their original code; silence arrives as `unavailable` after the timeout.
 */
@Injectable()
export class MessagingClient implements OnApplicationShutdown {
  constructor(@Inject(NATS_CLIENT_PROXY) private readonly proxy: ClientProxy) {}

  connect(): Promise<unknown> {
    return this.proxy.connect();
  }

  async request<S extends RequestSubject>(
    subject: S,
    payload: RequestOf<S>,
    timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
  ): Promise<ReplyOf<S>> {
    try {
      return await firstValueFrom(this.proxy.send<ReplyOf<S>, RequestOf<S>>(subject, payload).pipe(timeout(timeoutMs)));
    } catch (error) {
      throw toKilnError(subject, error, timeoutMs);
    }
  }

  emit<S extends EventSubject>(subject: S, payload: EventOf<S>): Promise<unknown> {
    return firstValueFrom(this.proxy.emit<unknown, EventOf<S>>(subject, payload), { defaultValue: undefined });
  }

  async onApplicationShutdown(): Promise<void> {
    await this.proxy.close();
  }
}

function toKilnError(subject: string, error: unknown, timeoutMs: number): KilnError {
  if (error instanceof KilnError) return error;
  if (KilnError.isPayload(error)) return KilnError.fromPayload(error);
  if (error instanceof TimeoutError) {
    return new KilnError(ErrorCode.Unavailable, `no reply on ${subject} within ${timeoutMs} ms`);
  }
  // NATS tells at once when no service subscribes to the subject; Nest surfaces it as EmptyResponseException.
  if (error instanceof EmptyResponseException) return new KilnError(ErrorCode.Unavailable, `no service answers ${subject}`);
  const message = error instanceof Error ? error.message : typeof error === 'object' ? JSON.stringify(error) : String(error);
  return new KilnError(ErrorCode.Internal, `${subject} failed: ${message}`);
}
