import { Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import type { Subscription } from 'nats';
import { describeError } from '@kiln/config';
import { NatsConnectionHolder, Subjects, TemplateBuildCancel } from '@kiln/messaging';

/** The builds running in this process, each with the signal that stops it. */
@Injectable()
export class BuildCancellations {
  private readonly running = new Map<string, AbortController>();

  /** Tracks a running build; call the returned function when it ends. */
  track(buildId: string): { signal: AbortSignal; done: () => void } {
    const controller = new AbortController();
    this.running.set(buildId, controller);
    return { signal: controller.signal, done: () => this.running.get(buildId) === controller && this.running.delete(buildId) };
  }

  /** Stops the build if it runs here; false when it does not. */
  cancel(buildId: string): boolean {
    const controller = this.running.get(buildId);
    controller?.abort();
    return controller !== undefined;
  }
}

/**
 * Hears the gateway's cancellations (`kiln.templates.builds.cancel`). Every template builder subscribes (no queue
 * group): the one running the build stops it. A build not running anywhere is stopped by its cancelRequested flag,
 * which the runner reads before it starts and while it runs, so a lost message delays a cancel but never loses it.
 */
@Injectable()
export class BuildCancelListener implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(BuildCancelListener.name);
  private subscription?: Subscription;

  constructor(
    private readonly nats: NatsConnectionHolder,
    private readonly cancellations: BuildCancellations,
  ) {}

  onApplicationBootstrap(): void {
    this.subscription = this.nats.nc.subscribe(Subjects.templateBuildCancel, {
      callback: (error, message) => {
        if (error) return this.logger.warn(`cancel subscription: ${describeError(error)}`);
        let request: TemplateBuildCancel;
        try {
          request = message.json<TemplateBuildCancel>();
        } catch {
          return this.logger.warn('ignored a build cancellation that is not JSON');
        }
        if (typeof request?.buildId !== 'string') return this.logger.warn('ignored a build cancellation without buildId');
        if (this.cancellations.cancel(request.buildId)) this.logger.log(`cancelling build ${request.buildId}`);
      },
    });
  }

  onApplicationShutdown(): void {
    this.subscription?.unsubscribe();
  }
}
