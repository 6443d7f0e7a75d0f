import { Injectable, Logger } from '@nestjs/common';
import { AckPolicy, DeliverPolicy, JSONCodec, JetStreamManager, RetentionPolicy, StorageType } from 'nats';
import { NatsConnectionHolder } from './nats-connection';
import {
  SANDBOX_EVENTS_STREAM,
  SANDBOX_EVENTS_SUBJECT_PREFIX,
  SandboxEventSource,
  SandboxLifecycleEvent,
  sandboxEventSourceOf,
  sandboxEventSubject,
} from './subjects';

const codec = JSONCodec<SandboxLifecycleEvent>();

/** Durable lifecycle events on JetStream: published by host agents and the scheduler, consumed by anyone. */
@Injectable()
export class SandboxEventStream {
  private readonly logger = new Logger('sandbox-events');

  constructor(private readonly nats: NatsConnectionHolder) {}

  /** Idempotent: creates the stream or leaves the existing one as it is. */
  async ensureStream(): Promise<void> {
    const jsm: JetStreamManager = await this.nats.nc.jetstreamManager();
    try {
      await jsm.streams.info(SANDBOX_EVENTS_STREAM);
    } catch {
      await jsm.streams.add({
        name: SANDBOX_EVENTS_STREAM,
        subjects: [`${SANDBOX_EVENTS_SUBJECT_PREFIX}.>`],
        retention: RetentionPolicy.Limits,
        storage: StorageType.File,
        max_age: 7 * 24 * 3600 * 1e9,
        max_msgs: 1_000_000,
      });
    }
  }

  /** `source` picks the subject, which the publisher's NATS user must be allowed to publish on (its own host id). */
  async publish(event: SandboxLifecycleEvent, source: SandboxEventSource): Promise<number> {
    const ack = await this.nats.nc.jetstream().publish(sandboxEventSubject(event.kind, source), codec.encode(event));
    return ack.seq;
  }

  /**
   * Delivers every event to `handler` through a durable consumer, so a restarted
   * consumer resumes where it stopped. The handler also gets the publisher the subject names (undefined for a
   * subject of no known form): unlike the payload's hostId, NATS permissions vouch for it. Returns a stop function.
   */
  async consume(
    durableName: string,
    handler: (event: SandboxLifecycleEvent, source: SandboxEventSource | undefined) => Promise<void>,
  ): Promise<() => Promise<void>> {
    const jsm = await this.nats.nc.jetstreamManager();
    try {
      await jsm.consumers.info(SANDBOX_EVENTS_STREAM, durableName);
    } catch {
      await jsm.consumers.add(SANDBOX_EVENTS_STREAM, {
        durable_name: durableName,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.New,
        max_deliver: 5,
      });
    }
    const consumer = await this.nats.nc.jetstream().consumers.get(SANDBOX_EVENTS_STREAM, durableName);
    const messages = await consumer.consume();
    void (async () => {
      for await (const message of messages) {
        try {
          await handler(codec.decode(message.data), sandboxEventSourceOf(message.subject));
          message.ack();
        } catch (error) {
          this.logger.warn(`handler failed for event ${message.seq}: ${String(error)}`);
          message.nak(1_000);
        }
      }
    })();
    return async () => {
      await messages.close();
    };
  }
}
