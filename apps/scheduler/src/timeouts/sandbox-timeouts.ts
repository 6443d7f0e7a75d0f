import { Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { Job, Queue, Worker } from 'bullmq';
import { RedisConnection } from './redis-connection';

export const SANDBOX_TIMEOUT_QUEUE = 'sandbox-timeouts';

export interface SandboxTimeoutJob {
  sandboxId: string;
  /** The expiry this job was scheduled for; a job whose sandbox was extended since is stale. */
  expiresAt: string;
}

export type ExpiryHandler = (job: SandboxTimeoutJob) => Promise<void>;

function jobIdFor(sandboxId: string): string {
  return `expire-${sandboxId}`;
}

/**
 * Sandbox timeouts as BullMQ delayed jobs in Redis, one per sandbox, so they
 * survive scheduler restarts and fire on whichever replica is up.
 */
@Injectable()
export class SandboxTimeouts implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(SandboxTimeouts.name);
  private queue?: Queue<SandboxTimeoutJob>;
  private worker?: Worker<SandboxTimeoutJob>;
  private handler?: ExpiryHandler;
  private workerConnection?: RedisConnection['redis'];

  constructor(private readonly connection: RedisConnection) {}

  async onModuleInit(): Promise<void> {
    await this.connection.open();
    this.queue = new Queue<SandboxTimeoutJob>(SANDBOX_TIMEOUT_QUEUE, { connection: this.connection.redis });
  }

  /** Starts consuming expiries; called once the lifecycle service can handle them. */
  startWorker(handler: ExpiryHandler): void {
    this.handler = handler;
    this.worker = new Worker<SandboxTimeoutJob>(
      SANDBOX_TIMEOUT_QUEUE,
      async (job: Job<SandboxTimeoutJob>) => this.handler?.(job.data),
      { connection: (this.workerConnection = this.connection.redis.duplicate()), concurrency: 8 },
    );
    this.worker.on('failed', (job, error) => this.logger.warn(`expiry of ${job?.data.sandboxId} failed: ${error.message}`));
  }

  /** (Re)schedules the sandbox's expiry, replacing any earlier one. */
  async schedule(sandboxId: string, expiresAt: Date): Promise<void> {
    const queue = this.requireQueue();
    await this.cancel(sandboxId);
    await queue.add(
      'expire',
      { sandboxId, expiresAt: expiresAt.toISOString() },
      { jobId: jobIdFor(sandboxId), delay: Math.max(0, expiresAt.getTime() - Date.now()), removeOnComplete: true, removeOnFail: 100, attempts: 5, backoff: { type: 'exponential', delay: 1_000 } },
    );
  }

  async cancel(sandboxId: string): Promise<void> {
    const job = await this.requireQueue().getJob(jobIdFor(sandboxId));
    // An active (running) job cannot be removed; it re-checks the expiry itself and becomes a no-op.
    await job?.remove().catch(() => undefined);
  }

  private requireQueue(): Queue<SandboxTimeoutJob> {
    if (!this.queue) throw new Error('timeout queue used before module init');
    return this.queue;
  }

  async onApplicationShutdown(): Promise<void> {
    await this.worker?.close();
    await this.queue?.close();
    await this.workerConnection?.quit().catch(() => undefined);
  }
}
