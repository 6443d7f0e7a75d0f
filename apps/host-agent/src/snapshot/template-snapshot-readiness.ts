import { Logger } from '@nestjs/common';
import { describeError } from '@kiln/config';
import { InvalidTemplateIdError, TemplateNotFoundError } from '../template';
import { TemplateNotReadyError } from './snapshot.errors';
import type { TemplateSnapshot } from './template-snapshots';

/** What the readiness tracker needs of TemplateSnapshots (the seam its retry logic is tested against). */
export interface SnapshotSource {
  ensure(templateId: string, buildId?: string): Promise<TemplateSnapshot>;
}

export interface SnapshotRetryPolicy {
  /** Wait after the first failed attempt; it doubles after every further failure... */
  initialDelayMs: number;
  /** ...up to this. Retries go on for as long as the agent runs. */
  maxDelayMs: number;
}

export type TemplateSnapshotState = 'building' | 'ready' | 'failed';

/** One template build's snapshot as /health reports it. */
export interface TemplateSnapshotStatus {
  templateId: string;
  buildId: string;
  state: TemplateSnapshotState;
  /** Attempts made since the agent started (the one in progress included). */
  attempts: number;
  /** Why the last attempt failed: set while `failed`, and while `building` again after a failure. */
  lastFailure?: string;
  /** When the next attempt starts (while `failed`). */
  nextRetryAt?: string;
}

interface TrackedBuild {
  templateId: string;
  buildId: string;
  state: TemplateSnapshotState;
  attempts: number;
  /** Failures since the last success: the backoff grows with them. */
  consecutiveFailures: number;
  lastFailure?: string;
  nextRetryAtMs?: number;
  retryTimer?: NodeJS.Timeout;
  /** The attempt in progress, or the last one. */
  attempt: Promise<TemplateSnapshot>;
}

/** The failure text kept for /health and error messages: a boot failure's message carries the serial log. */
const FAILURE_SUMMARY_CHARS = 300;

/** Errors that say the template build does not exist: nothing to retry, and nothing to report as not ready. */
function isTemplateMissing(error: unknown): boolean {
  return error instanceof TemplateNotFoundError || error instanceof InvalidTemplateIdError;
}

function summariseFailure(error: unknown): string {
  const text = describeError(error);
  return text.length > FAILURE_SUMMARY_CHARS ? `${text.slice(0, FAILURE_SUMMARY_CHARS)}...` : text;
}

/**
 * Keeps every template build the agent was asked for on its way to a usable snapshot: an attempt that fails is
 * retried with exponential backoff for as long as the agent runs, and each build's state (building, ready, failed
 * with its reason and next retry) is there for /health. A create asks `whenReady`: it waits for a build in progress
 * (up to its own bound) and fails fast, with the reason and a retry-after, while the last attempt has failed.
 */
export class TemplateSnapshotReadiness {
  private readonly logger = new Logger(TemplateSnapshotReadiness.name);
  /** Keyed by `templateId/buildId`. */
  private readonly builds = new Map<string, TrackedBuild>();
  private closed = false;

  constructor(
    private readonly source: SnapshotSource,
    private readonly retryPolicy: SnapshotRetryPolicy,
    /** Called with every snapshot an attempt made ready (the clone pool starts filling from it). */
    private readonly onReady: (snapshot: TemplateSnapshot) => void = () => undefined,
  ) {}

  /**
   * Starts tracking a build (a no-op when it is tracked already) and resolves when its current attempt has settled,
   * either way: the agent's start makes its templates' snapshots one after the other, not all at once.
   */
  async prepare(templateId: string, buildId: string): Promise<void> {
    await this.track(templateId, buildId).attempt.catch(() => undefined);
  }

  /**
   * The build's snapshot, ready to restore clones from. Throws TemplateNotReadyError while its last attempt has
   * failed, or when an attempt in progress does not finish within `waitMs`; a build this agent has not seen yet is
   * attempted now. Missing templates throw the template store's errors and are not tracked.
   */
  async whenReady(templateId: string, buildId: string, waitMs: number): Promise<TemplateSnapshot> {
    const build = this.track(templateId, buildId);
    if (build.state === 'failed') throw this.notReady(build);
    if (build.state === 'building') {
      const attempt = build.attempt;
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timed-out'>((resolve) => {
        timer = setTimeout(() => resolve('timed-out'), waitMs);
      });
      try {
        const outcome = await Promise.race([attempt, timedOut]);
        if (outcome !== 'timed-out') return outcome;
      } catch (error) {
        if (isTemplateMissing(error)) throw error;
        // The attempt's own handler ran first (it was attached first) and recorded the failure and the retry.
        throw this.notReady(build);
      } finally {
        clearTimeout(timer);
      }
      throw new TemplateNotReadyError(
        templateId,
        `its snapshot is still being built (attempt ${build.attempts}; waited ${Math.round(waitMs / 1000)} s)`,
        Math.max(1, Math.ceil(this.retryPolicy.initialDelayMs / 1000)),
      );
    }
    try {
      // Ready: loading again is a stat per file for a verified snapshot, and notices files that changed since.
      return await this.source.ensure(templateId, buildId);
    } catch (error) {
      if (isTemplateMissing(error)) throw error;
      if (build.state === 'ready') this.recordFailure(build, error);
      throw this.notReady(build);
    }
  }

  /** Every tracked build's state, for /health and host info. */
  describe(): TemplateSnapshotStatus[] {
    return [...this.builds.values()].map((build) => ({
      templateId: build.templateId,
      buildId: build.buildId,
      state: build.state,
      attempts: build.attempts,
      lastFailure: build.state === 'ready' ? undefined : build.lastFailure,
      nextRetryAt: build.state === 'failed' && build.nextRetryAtMs !== undefined ? new Date(build.nextRetryAtMs).toISOString() : undefined,
    }));
  }

  /** Stops retrying (agent shutdown); an attempt in progress finishes but schedules nothing. */
  close(): void {
    this.closed = true;
    for (const build of this.builds.values()) clearTimeout(build.retryTimer);
  }

  private track(templateId: string, buildId: string): TrackedBuild {
    const key = `${templateId}/${buildId}`;
    let build = this.builds.get(key);
    if (!build) {
      build = { templateId, buildId, state: 'building', attempts: 0, consecutiveFailures: 0, attempt: Promise.resolve(undefined as never) };
      this.builds.set(key, build);
      this.startAttempt(build);
    }
    return build;
  }

  private startAttempt(build: TrackedBuild): void {
    build.state = 'building';
    build.attempts += 1;
    build.nextRetryAtMs = undefined;
    const started = performance.now();
    const attempt = this.source.ensure(build.templateId, build.buildId);
    build.attempt = attempt;
    attempt.then(
      (snapshot) => {
        if (build.attempt !== attempt) return;
        build.state = 'ready';
        build.consecutiveFailures = 0;
        build.lastFailure = undefined;
        this.logger.log(`template ${build.templateId}/${build.buildId} snapshot ready (attempt ${build.attempts}, ${Math.round(performance.now() - started)} ms)`);
        if (!this.closed) this.onReady(snapshot);
      },
      (error: unknown) => {
        if (build.attempt !== attempt) return;
        if (isTemplateMissing(error)) {
          // Deleted (or never there): no snapshot will ever come of it, so it is not reported as not ready.
          this.builds.delete(`${build.templateId}/${build.buildId}`);
          this.logger.warn(`template ${build.templateId}/${build.buildId}: ${describeError(error)}; not tracked any more`);
          return;
        }
        this.recordFailure(build, error);
      },
    );
  }

  private recordFailure(build: TrackedBuild, error: unknown): void {
    build.state = 'failed';
    build.consecutiveFailures += 1;
    build.lastFailure = summariseFailure(error);
    clearTimeout(build.retryTimer);
    if (this.closed) {
      build.nextRetryAtMs = undefined;
      return;
    }
    const delayMs = this.retryDelayMs(build.consecutiveFailures);
    build.nextRetryAtMs = Date.now() + delayMs;
    build.retryTimer = setTimeout(() => {
      build.retryTimer = undefined;
      if (!this.closed) this.startAttempt(build);
    }, delayMs);
    build.retryTimer.unref();
    this.logger.error(
      `template ${build.templateId}/${build.buildId} snapshot failed (attempt ${build.attempts}): ${error instanceof Error ? error.message : String(error)}; ` +
        `retrying in ${Math.round(delayMs / 1000)} s`,
    );
  }

  /** 2 s, 4 s, 8 s ... capped (with the default policy). */
  private retryDelayMs(consecutiveFailures: number): number {
    return Math.min(this.retryPolicy.initialDelayMs * 2 ** (consecutiveFailures - 1), this.retryPolicy.maxDelayMs);
  }

  private notReady(build: TrackedBuild): TemplateNotReadyError {
    const retryInMs = build.nextRetryAtMs !== undefined ? Math.max(0, build.nextRetryAtMs - Date.now()) : this.retryPolicy.initialDelayMs;
    const retryAfterSeconds = Math.max(1, Math.ceil(retryInMs / 1000));
    const retry = build.nextRetryAtMs !== undefined ? `; next attempt in ${retryAfterSeconds} s` : '';
    return new TemplateNotReadyError(
      build.templateId,
      `snapshot failed: ${build.lastFailure ?? 'unknown error'} (attempt ${build.attempts}${retry})`,
      retryAfterSeconds,
    );
  }
}
