import { Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { Job, Queue, Worker } from 'bullmq';
import { RedisConnection } from './redis-connection';
import { settleWithin } from './settle-within';

export const SANDBOX_TIMEOUT_QUEUE = 'sandbox-timeouts';

export interface SandboxTimeoutJob {
  sandboxId: string;
  /** The expiry this job was scheduled for; a job whose sandbox was extended since is stale. */
  expiresAt: string;
}

export type ExpiryHandler = (job: SandboxTimeoutJob) => Promise<void>;

/** A schedule or cancel that takes longer than this is given up: the request it serves must not wait on Redis. */
const REDIS_CALL_DEADLINE_MS = 1_500;

function jobIdFor(sandboxId: string): string {
  return `expire-${sandboxId}`;
}

/**
 * Sandbox timeouts as BullMQ delayed jobs in Redis, one per sandbox, so they
 * survive scheduler restarts and fire on whichever replica is up.
 *
 * The jobs fire at the exact moment; they are not the guarantee. A job lost to a crash between the move to running
 * and its scheduling, a Redis outage or a Redis without persistence is covered by reconcile's expiry sweep over the
 * rows' `expiresAt`. So scheduling and cancelling are best-effort, bounded in time, and never fail a request.
 */
/** How long each shutdown step may wait for Redis. */
const SHUTDOWN_STEP_MS = 3_000;

@Injectable()
export class SandboxTimeouts implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(SandboxTimeouts.name);
  private queue?: Queue<SandboxTimeoutJob>;
  private worker?: Worker<SandboxTimeoutJob>;
  private handler?: ExpiryHandler;
  private workerConnection?: RedisConnection['blocking'];

  constructor(private readonly connection: RedisConnection) {}

  async onModuleInit(): Promise<void> {
    await this.connection.open();
    this.queue = new Queue<SandboxTimeoutJob>(SANDBOX_TIMEOUT_QUEUE, { connection: this.connection.commands });
    this.queue.on('error', (error) => this.logger.debug(`timeout queue: ${error.message}`));
  }

  /** Starts consuming expiries; called once the lifecycle service can handle them. */
  startWorker(handler: ExpiryHandler): void {
    this.handler = handler;
    this.worker = new Worker<SandboxTimeoutJob>(
      SANDBOX_TIMEOUT_QUEUE,
      async (job: Job<SandboxTimeoutJob>) => this.handler?.(job.data),
      { connection: (this.workerConnection = this.connection.blocking.duplicate()), concurrency: 8 },
    );
    this.worker.on('failed', (job, error) => this.logger.warn(`expiry of ${job?.data.sandboxId} failed: ${error.message}`));
    this.worker.on('error', (error) => this.logger.debug(`timeout worker: ${error.message}`));
  }

  /** (Re)schedules the sandbox's expiry, replacing any earlier one. False when Redis did not take it (the sweep will). */
  async schedule(sandboxId: string, expiresAt: Date): Promise<boolean> {
    const queue = this.requireQueue();
    return this.bestEffort(`schedule expiry of ${sandboxId}`, async () => {
      await this.removeJob(sandboxId);
      await queue.add(
        'expire',
        { sandboxId, expiresAt: expiresAt.toISOString() },
        { jobId: jobIdFor(sandboxId), delay: Math.max(0, expiresAt.getTime() - Date.now()), removeOnComplete: true, removeOnFail: 100, attempts: 5, backoff: { type: 'exponential', delay: 1_000 } },
      );
    });
  }

  /** Drops the sandbox's pending expiry. A job left behind is harmless: it re-checks the row and does nothing. */
  cancel(sandboxId: string): Promise<boolean> {
    return this.bestEffort(`cancel expiry of ${sandboxId}`, () => this.removeJob(sandboxId));
  }

  private async removeJob(sandboxId: string): Promise<void> {
    const job = await this.requireQueue().getJob(jobIdFor(sandboxId));
    // An active (running) job cannot be removed; it re-checks the expiry itself and becomes a no-op.
    await job?.remove().catch(() => undefined);
  }

  private async bestEffort(what: string, operation: () => Promise<void>): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        operation(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`Redis did not answer within ${REDIS_CALL_DEADLINE_MS} ms`)), REDIS_CALL_DEADLINE_MS);
        }),
      ]);
      return true;
    } catch (error) {
      this.logger.warn(`${what} failed; reconcile's expiry sweep covers it: ${error instanceof Error ? error.message : String(error)}`);
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  private requireQueue(): Queue<SandboxTimeoutJob> {
    if (!this.queue) throw new Error('timeout queue used before module init');
    return this.queue;
  }

  /**
   * Bounded: with Redis unreachable a graceful close would wait for it forever (and a scheduler asked to stop would
   * never exit). A job cut short is picked up again by BullMQ's stalled-job check; expiry is idempotent.
   */
  async onApplicationShutdown(): Promise<void> {
    await settleWithin(SHUTDOWN_STEP_MS, this.worker?.close(), () => this.worker?.close(true));
    await settleWithin(SHUTDOWN_STEP_MS, this.queue?.close());
    await settleWithin(SHUTDOWN_STEP_MS, this.workerConnection?.quit(), () => this.workerConnection?.disconnect());
  }
}

