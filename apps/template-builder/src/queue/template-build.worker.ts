import { Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { Job, UnrecoverableError, Worker } from 'bullmq';
import IORedis from 'ioredis';
import { TemplateBuilderEnv, describeError, retryWithBackoff } from '@kiln/config';
import { DependencyHealth, MetricsRegistry } from '@kiln/telemetry';
import {
  BUILD_TEMPLATE_JOB,
  BuildTemplateJob,
  BuildTemplateResult,
  REGISTER_TEMPLATE_JOB,
  RegisterTemplateJob,
  RegisterTemplateResult,
  TEMPLATE_BUILD_QUEUE,
} from '@kiln/contracts';
import { TemplateRegistrationService } from '../registration/template-registration.service';
import { TemplateBuildRunner } from '../build/template-build.runner';
import { TemplateBuildStore } from '../build/template-build.store';
import { TemplateBuildFailure } from '../build/template-build.errors';

type TemplateJobData = RegisterTemplateJob | BuildTemplateJob;
type TemplateJobResult = RegisterTemplateResult | BuildTemplateResult;
type TemplateJob = Job<TemplateJobData, TemplateJobResult>;

/**
 * BullMQ worker for the template-builds queue (Redis-backed, survives restarts): `register-template` (a built-in
 * template built on a host by tools/guest-image) and `build-template` (a build from a definition, run on a host
 * agent), at most BUILD_CONCURRENCY at once.
 */
@Injectable()
export class TemplateBuildWorker implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(TemplateBuildWorker.name);
  private readonly redis: IORedis;
  private worker?: Worker<TemplateJobData, TemplateJobResult>;
  private readonly jobs;

  constructor(
    private readonly env: TemplateBuilderEnv,
    private readonly registration: TemplateRegistrationService,
    private readonly builds: TemplateBuildRunner,
    private readonly buildStore: TemplateBuildStore,
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
    this.worker = new Worker<TemplateJobData, TemplateJobResult>(TEMPLATE_BUILD_QUEUE, (job: TemplateJob) => this.process(job), {
      connection: this.redis,
      concurrency: this.env.BUILD_CONCURRENCY,
    });
    this.worker.on('failed', (job, error) => void this.settleFailedBuild(job, error));
    this.worker.on('error', (error) => this.logger.warn(`worker: ${describeError(error)}`));
  }

  private async process(job: TemplateJob): Promise<TemplateJobResult> {
    try {
      const result =
        job.name === REGISTER_TEMPLATE_JOB
          ? await this.register(job as unknown as Job<RegisterTemplateJob>)
          : job.name === BUILD_TEMPLATE_JOB
            ? await this.build(job as unknown as Job<BuildTemplateJob>)
            : undefined;
      if (!result) {
        this.jobs.inc({ name: job.name, outcome: 'unknown' });
        throw new UnrecoverableError(`unknown job ${job.name}`);
      }
      this.jobs.inc({ name: job.name, outcome: 'state' in result ? result.state : 'ok' });
      return result;
    } catch (error) {
      if (!(error instanceof UnrecoverableError && error.message.startsWith('unknown job'))) this.jobs.inc({ name: job.name, outcome: 'error' });
      throw error;
    }
  }

  private async register(job: Job<RegisterTemplateJob>): Promise<RegisterTemplateResult> {
    const result = await this.registration.register(job.data);
    this.logger.log(`registered template ${result.templateId} build ${result.buildId}`);
    return result;
  }

  private async build(job: Job<BuildTemplateJob>): Promise<BuildTemplateResult> {
    if (typeof job.data?.buildId !== 'string') throw new UnrecoverableError('build-template job without buildId');
    try {
      return await this.builds.run(job.data.buildId, { number: job.attemptsMade + 1, of: Math.max(1, job.opts.attempts ?? 1) });
    } catch (error) {
      // A user step, a cancel or a definition that cannot run: BullMQ must not try again.
      if (error instanceof TemplateBuildFailure && !error.retryable) throw new UnrecoverableError(error.message);
      throw error;
    }
  }

  /**
   * A build job that failed for good without the runner ending its build (its worker died mid-build and BullMQ gave
   * up on the stalled job) would leave the build `building` forever: end it `error` with what BullMQ says.
   */
  private async settleFailedBuild(job: TemplateJob | undefined, error: Error): Promise<void> {
    const buildId = (job?.data as Partial<BuildTemplateJob> | undefined)?.buildId;
    if (!job || job.name !== BUILD_TEMPLATE_JOB || typeof buildId !== 'string') return;
    const final = error instanceof UnrecoverableError || job.attemptsMade >= Math.max(1, job.opts.attempts ?? 1);
    if (!final) return;
    await this.buildStore.markError(buildId, error.message).catch((e) => this.logger.warn(`build ${buildId}: ${describeError(e)}`));
  }

  async onApplicationShutdown(): Promise<void> {
    await this.worker?.close();
    await this.redis.quit().catch(() => undefined);
  }
}
