import { Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import { NatsConnection, connect } from 'nats';
import { describeError, retryWithBackoff } from '@kiln/config';

/**
 * A raw NATS connection for what Nest's transport does not do (JetStream, health
 * flushes). Connected once at start-up with backoff.
 */
@Injectable()
export class NatsConnectionHolder implements OnApplicationShutdown {
  private readonly logger = new Logger('nats');
  private connection?: NatsConnection;

  async open(servers: string, name: string): Promise<NatsConnection> {
    if (this.connection) return this.connection;
    this.connection = await retryWithBackoff(
      `NATS at ${servers}`,
      () => connect({ servers, name, reconnect: true, maxReconnectAttempts: -1, timeout: 2_000 }),
      { onRetry: (error, n, delay) => this.logger.warn(`NATS connect attempt ${n} failed (${describeError(error)}); retrying in ${delay} ms`) },
    );
    return this.connection;
  }

  get nc(): NatsConnection {
    if (!this.connection) throw new Error('NATS connection used before open()');
    return this.connection;
  }

  async ping(): Promise<void> {
    await this.nc.flush();
  }

  async onApplicationShutdown(): Promise<void> {
    await this.connection?.drain().catch(() => undefined);
  }
}
