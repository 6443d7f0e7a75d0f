import { Injectable, Logger } from '@nestjs/common';
import { AckPolicy, DeliverPolicy, JSONCodec, RetentionPolicy, StorageType } from 'nats';
import { HOST_EVENTS_STREAM, HOST_EVENTS_SUBJECT_PREFIX, HostStateEvent, hostStateEventSubject } from './fleet';
import { NatsConnectionHolder } from './nats-connection';

const codec = JSONCodec<HostStateEvent>();

/**
 * Durable host state events (KILN_HOST_EVENTS): the host monitor publishes each transition, and a durable consumer
 * shared by the scheduler replicas gets each event once. Either side may create the stream first; both create it
 * with this one definition.
 */
@Injectable()
export class HostEventStream {
  private readonly logger = new Logger('host-events');

  constructor(private readonly nats: NatsConnectionHolder) {}

  /** Idempotent: creates the stream or leaves the existing one as it is. */
  async ensureStream(): Promise<void> {
    const jsm = await this.nats.nc.jetstreamManager();
    try {
      await jsm.streams.info(HOST_EVENTS_STREAM);
      return;
    } catch {
      // Missing: created below.
    }
    try {
      await jsm.streams.add({
        name: HOST_EVENTS_STREAM,
        subjects: [`${HOST_EVENTS_SUBJECT_PREFIX}.>`],
        retention: RetentionPolicy.Limits,
        storage: StorageType.File,
        max_age: 7 * 24 * 3600 * 1e9,
        max_msgs: 100_000,
      });
    } catch (error) {
      // The monitor and a scheduler starting together: whoever lost the race finds the stream the other made.
      await jsm.streams.info(HOST_EVENTS_STREAM).catch(() => {
        throw error;
      });
    }
  }

  async publish(event: HostStateEvent): Promise<number> {
    const ack = await this.nats.nc.jetstream().publish(hostStateEventSubject(event.hostId), codec.encode(event));
    return ack.seq;
  }

  /**
   * Delivers events to `handler` through the durable consumer `durableName` (explicit ack: an event whose handler
   * failed comes again, up to 5 times), so each event is handled once across the processes sharing the name and a
   * restarted one resumes where it stopped. Events from before the consumer first existed are not delivered: the
   * reconcile sweep covers those. Returns a stop function.
   */
  async consume(durableName: string, handler: (event: HostStateEvent) => Promise<void>): Promise<() => Promise<void>> {
    await this.ensureStream();
    const jsm = await this.nats.nc.jetstreamManager();
    try {
      await jsm.consumers.info(HOST_EVENTS_STREAM, durableName);
    } catch {
      await jsm.consumers.add(HOST_EVENTS_STREAM, {
        durable_name: durableName,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.New,
        max_deliver: 5,
      });
    }
    const consumer = await this.nats.nc.jetstream().consumers.get(HOST_EVENTS_STREAM, durableName);
    const messages = await consumer.consume();
    void (async () => {
      for await (const message of messages) {
        let event: HostStateEvent;
        try {
          event = codec.decode(message.data);
        } catch (error) {
          // A payload that cannot be read never will be: acknowledged so it does not come back.
          this.logger.warn(`host event ${message.seq} is not JSON (${String(error)}); dropped`);
          message.ack();
          continue;
        }
        try {
          await handler(event);
          message.ack();
        } catch (error) {
          this.logger.warn(`handler failed for host event ${message.seq}: ${String(error)}`);
          message.nak(1_000);
        }
      }
    })();
    return async () => {
      await messages.close();
    };
  }
}
