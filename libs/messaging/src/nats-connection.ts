import { Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import { NatsConnection, connect } from 'nats';
import { describeError, retryWithBackoff } from '@kiln/config';
import { NatsAuth, natsAuthOptions } from './nats-auth';

/**
 * A raw NATS connection for what Nest's transport does not do (JetStream, health
 * flushes). Connected once at start-up with backoff.
 */
@Injectable()
export class NatsConnectionHolder implements OnApplicationShutdown {
  private readonly logger = new Logger('nats');
  private connection?: NatsConnection;
  /** Why the connection is down (the last status event), or undefined while it is up. */
  private downBecause?: string;

  async open(servers: string, name: string, auth?: NatsAuth): Promise<NatsConnection> {
    if (this.connection) return this.connection;
    this.connection = await retryWithBackoff(
      `NATS at ${servers}`,
      () => connect({ servers, name, reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 1_000, timeout: 2_000, ...natsAuthOptions(auth) }),
      { onRetry: (error, n, delay) => this.logger.warn(`NATS connect attempt ${n} failed (${describeError(error)}); retrying in ${delay} ms`) },
    );
    void this.followStatus(this.connection);
    return this.connection;
  }

  private async followStatus(connection: NatsConnection): Promise<void> {
    for await (const status of connection.status()) {
      if (status.type === 'disconnect' || status.type === 'reconnecting') this.downBecause = `disconnected from NATS (${status.type})`;
      else if (status.type === 'reconnect') this.downBecause = undefined;
    }
    this.downBecause = 'NATS connection closed';
  }

  get nc(): NatsConnection {
    if (!this.connection) throw new Error('NATS connection used before open()');
    return this.connection;
  }

  /** A round trip to the server; fails at once while disconnected (a flush would wait for the reconnect). */
  async ping(): Promise<void> {
    if (this.downBecause) throw new Error(this.downBecause);
    await this.nc.flush();
  }

  async onApplicationShutdown(): Promise<void> {
    await this.connection?.drain().catch(() => undefined);
  }
}
