import { Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { Job, Worker } from 'bullmq';
import IORedis from 'ioredis';
import { TemplateBuilderEnv, describeError, retryWithBackoff } from '@kiln/config';
import { DependencyHealth, MetricsRegistry } from '@kiln/telemetry';
import { TemplateRegistrationService } from '../registration/template-registration.service';
import { RegisterTemplateJob, RegisterTemplateResult, TEMPLATE_BUILD_QUEUE } from '@kiln/contracts';

/** BullMQ worker for the template-builds queue (Redis-backed, survives restarts). */
@Injectable()
export class TemplateBuildWorker implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(TemplateBuildWorker.name);
  private readonly redis: IORedis;
  private worker?: Worker<RegisterTemplateJob, RegisterTemplateResult>;
  private readonly jobs;

  constructor(
    private readonly env: TemplateBuilderEnv,
    private readonly registration: TemplateRegistrationService,
    health: DependencyHealth,
    metrics: MetricsRegistry,
  ) {
    this.redis = new IORedis(env.REDIS_URL, { maxRetriesPerRequest: null, lazyConnect: true, connectTimeout: 2_000 });
    this.redis.on('error', (error) => this.logger.debug(`redis: ${describeError(error)}`));
    health.register('redis', () => this.redis.ping());
    this.jobs = metrics.counter('kiln_template_jobs_total', 'Template jobs processed', ['name', 'outcome']);
  }

  async onModuleInit(): Promise<void> {
    await retryWithBackoff(`Redis at ${this.env.REDIS_URL}`, async () => {
      if (this.redis.status === 'wait' || this.redis.status === 'end') await this.redis.connect();
      await this.redis.ping();
    });
    this.worker = new Worker<RegisterTemplateJob, RegisterTemplateResult>(TEMPLATE_BUILD_QUEUE, (job) => this.process(job), {
      connection: this.redis,
      concurrency: this.env.BUILD_CONCURRENCY,
    });
  }

  private async process(job: Job<RegisterTemplateJob, RegisterTemplateResult>): Promise<RegisterTemplateResult> {
    if (job.name !== 'register-template') {
      this.jobs.inc({ name: job.name, outcome: 'unknown' });
      throw new Error(`unknown job ${job.name}`);
    }
    try {
      const result = await this.registration.register(job.data);
      this.jobs.inc({ name: job.name, outcome: 'ok' });
      this.logger.log(`registered template ${result.templateId} build ${result.buildId}`);
      return result;
    } catch (error) {
      this.jobs.inc({ name: job.name, outcome: 'error' });
      throw error;
    }
  }

  async onApplicationShutdown(): Promise<void> {
    await this.worker?.close();
    await this.redis.quit().catch(() => undefined);
  }
}
