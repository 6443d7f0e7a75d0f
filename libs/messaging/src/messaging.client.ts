import { Inject, Injectable, OnApplicationShutdown } from '@nestjs/common';
import { ClientProxy } from '@nestjs/microservices';
import { EmptyResponseException } from '@nestjs/microservices/errors/empty-response.exception';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { Observable, Subscription, TimeoutError, filter, firstValueFrom, map, race, timeout } from 'rxjs';
import { MessagingUnavailableError } from './messaging-errors';
import { EventOf, EventSubject, ReplyOf, RequestOf, RequestSubject } from './subjects';

export const NATS_CLIENT_PROXY = Symbol('NATS_CLIENT_PROXY');
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

/** Nest's NATS client statuses (NatsStatus) that mean nothing sent now can be answered. */
const DISCONNECTED_STATUSES: ReadonlySet<string> = new Set(['disconnected', 'reconnecting']);

/**
 * Typed request/reply and events over NATS. Errors thrown by a handler arrive as
 * KilnError with their original code; silence arrives as `unavailable` after the timeout.
 *
 * While NATS is down the nats client buffers what is published until it reconnects, so a request would sit out its
 * whole timeout (minutes for a create). Instead a request made while disconnected fails at once, and one in flight
 * when the connection drops fails then: its reply, if any, is lost with the connection.
 */
@Injectable()
export class MessagingClient implements OnApplicationShutdown {
  private natsStatus?: string;
  private readonly statusWatch: Subscription;

  constructor(@Inject(NATS_CLIENT_PROXY) private readonly proxy: ClientProxy) {
    this.statusWatch = this.statuses().subscribe((status) => (this.natsStatus = status));
  }

  connect(): Promise<unknown> {
    return this.proxy.connect();
  }

  /** False while the client has lost NATS (it keeps reconnecting on its own). */
  get connected(): boolean {
    return this.natsStatus === undefined || !DISCONNECTED_STATUSES.has(this.natsStatus);
  }

  async request<S extends RequestSubject>(
    subject: S,
    payload: RequestOf<S>,
    timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
  ): Promise<ReplyOf<S>> {
    if (!this.connected) throw new MessagingUnavailableError(`NATS is unreachable (${this.natsStatus}): ${subject} was not sent`);
    const lostConnection = this.statuses().pipe(
      filter((status) => DISCONNECTED_STATUSES.has(status)),
      map((status): never => {
        throw new MessagingUnavailableError(`NATS connection lost (${status}) while waiting for the reply on ${subject}; its outcome is unknown`);
      }),
    );
    try {
      return await firstValueFrom(race(this.proxy.send<ReplyOf<S>, RequestOf<S>>(subject, payload), lostConnection).pipe(timeout(timeoutMs)));
    } catch (error) {
      throw toKilnError(subject, error, timeoutMs);
    }
  }

  emit<S extends EventSubject>(subject: S, payload: EventOf<S>): Promise<unknown> {
    return firstValueFrom(this.proxy.emit<unknown, EventOf<S>>(subject, payload), { defaultValue: undefined });
  }

  async onApplicationShutdown(): Promise<void> {
    this.statusWatch.unsubscribe();
    await this.proxy.close();
  }

  private statuses(): Observable<string> {
    return (this.proxy as unknown as { status?: Observable<string> }).status ?? new Observable<string>();
  }
}

function toKilnError(subject: string, error: unknown, timeoutMs: number): KilnError {
  if (error instanceof KilnError) return error;
  if (KilnError.isPayload(error)) return KilnError.fromPayload(error);
  if (error instanceof TimeoutError) {
    return new MessagingUnavailableError(`no reply on ${subject} within ${timeoutMs} ms`);
  }
  // NATS tells at once when no service subscribes to the subject; Nest surfaces it as EmptyResponseException.
  if (error instanceof EmptyResponseException) return new MessagingUnavailableError(`no service answers ${subject}`);
  const message = error instanceof Error ? error.message : typeof error === 'object' ? JSON.stringify(error) : String(error);
  // Nest's NATS client rejects sends between a disconnect and the reconnect with this text (a plain string).
  if (/connection lost|trying to reconnect|CONNECTION_CLOSED|CONNECTION_DRAINING|DISCONNECT/i.test(message)) {
    return new MessagingUnavailableError(`NATS is unreachable: ${subject} was not sent (${message})`);
  }
  return new KilnError(ErrorCode.Internal, `${subject} failed: ${message}`);
}
