import { Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import IORedis from 'ioredis';
import { SchedulerEnv, describeError, retryWithBackoff } from '@kiln/config';
import { DependencyHealth } from '@kiln/telemetry';

/** The scheduler's Redis connection (BullMQ needs `maxRetriesPerRequest: null`). */
@Injectable()
export class RedisConnection implements OnApplicationShutdown {
  private readonly logger = new Logger('redis');
  readonly redis: IORedis;

  constructor(env: SchedulerEnv, health: DependencyHealth) {
    this.redis = new IORedis(env.REDIS_URL, { maxRetriesPerRequest: null, lazyConnect: true, connectTimeout: 2_000 });
    this.redis.on('error', (error) => this.logger.debug(`redis: ${describeError(error)}`));
    health.register('redis', () => this.redis.ping());
  }

  async open(): Promise<void> {
    await retryWithBackoff(`Redis at ${this.redis.options.host}:${this.redis.options.port}`, async () => {
      if (this.redis.status === 'ready') return;
      if (this.redis.status === 'wait' || this.redis.status === 'end') await this.redis.connect();
      await this.redis.ping();
    }, { onRetry: (error, n, delay) => this.logger.warn(`Redis attempt ${n} failed (${describeError(error)}); retrying in ${delay} ms`) });
  }

  async onApplicationShutdown(): Promise<void> {
    await this.redis.quit().catch(() => undefined);
  }
}
