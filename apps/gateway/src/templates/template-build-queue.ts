import { Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import { GatewayEnv, describeError } from '@kiln/config';
import { BUILD_TEMPLATE_JOB, BUILD_TEMPLATE_JOB_OPTIONS, BuildTemplateJob, TEMPLATE_BUILD_QUEUE } from '@kiln/contracts';
import { BuildQueueUnavailableError } from './templates.errors';

/** How long adding a job may take before the start request fails with 503 (Redis down must not hang a request). */
const ENQUEUE_TIMEOUT_MS = 5_000;

/** The producer side of the template builder's BullMQ queue: one `build-template` job per started build. */
@Injectable()
export class TemplateBuildQueue implements OnApplicationShutdown {
  private readonly logger = new Logger(TemplateBuildQueue.name);
  private readonly redis: IORedis;
  private readonly queue: Queue<BuildTemplateJob>;

  constructor(env: GatewayEnv) {
    // Lazy: the gateway serves everything else while Redis is away; a build start then fails with 503.
    this.redis = new IORedis(env.REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2_000 });
    this.redis.on('error', (error) => this.logger.debug(`redis: ${describeError(error)}`));
    this.queue = new Queue<BuildTemplateJob>(TEMPLATE_BUILD_QUEUE, { connection: this.redis });
    this.queue.on('error', (error) => this.logger.debug(`queue: ${describeError(error)}`));
  }

  /** Enqueues the build; jobId = buildId, so a repeated add of the same build adds nothing. */
  async enqueue(buildId: string): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.queue.add(BUILD_TEMPLATE_JOB, { buildId }, { ...BUILD_TEMPLATE_JOB_OPTIONS, jobId: buildId }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${ENQUEUE_TIMEOUT_MS} ms`)), ENQUEUE_TIMEOUT_MS);
        }),
      ]);
    } catch (error) {
      throw new BuildQueueUnavailableError(describeError(error));
    } finally {
      clearTimeout(timer);
    }
  }

  async onApplicationShutdown(): Promise<void> {
    await this.queue.close().catch(() => undefined);
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}
