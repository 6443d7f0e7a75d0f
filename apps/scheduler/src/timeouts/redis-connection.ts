import { Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import IORedis from 'ioredis';
import { SchedulerEnv, describeError, retryWithBackoff } from '@kiln/config';
import { DependencyHealth } from '@kiln/telemetry';
import { settleWithin } from './settle-within';

/**
 * The scheduler's Redis connections. `blocking` is BullMQ's worker connection (it needs
 * `maxRetriesPerRequest: null` and waits out an outage on its own). `commands` carries everything a request waits
 * for (scheduling and cancelling timeout jobs, /health): with no offline queue it fails at once while Redis is down
 * instead of queueing until it is back.
 */
@Injectable()
export class RedisConnection implements OnApplicationShutdown {
  private readonly logger = new Logger('redis');
  readonly blocking: IORedis;
  readonly commands: IORedis;

  constructor(env: SchedulerEnv, health: DependencyHealth) {
    this.blocking = new IORedis(env.REDIS_URL, { maxRetriesPerRequest: null, lazyConnect: true, connectTimeout: 2_000 });
    this.commands = new IORedis(env.REDIS_URL, { maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true, connectTimeout: 2_000 });
    for (const connection of [this.blocking, this.commands]) connection.on('error', (error) => this.logger.debug(`redis: ${describeError(error)}`));
    health.register('redis', () => this.commands.ping());
  }

  async open(): Promise<void> {
    for (const connection of [this.blocking, this.commands]) {
      await retryWithBackoff(`Redis at ${connection.options.host}:${connection.options.port}`, async () => {
        if (connection.status === 'ready') return;
        if (connection.status === 'wait' || connection.status === 'end') await connection.connect();
        await connection.ping();
      }, { onRetry: (error, n, delay) => this.logger.warn(`Redis attempt ${n} failed (${describeError(error)}); retrying in ${delay} ms`) });
    }
  }

  /** `quit` waits for Redis to answer; with Redis gone it would wait forever, so it gets a few seconds. */
  async onApplicationShutdown(): Promise<void> {
    await Promise.all([this.blocking, this.commands].map((c) => settleWithin(3_000, c.quit(), () => c.disconnect())));
  }
}
