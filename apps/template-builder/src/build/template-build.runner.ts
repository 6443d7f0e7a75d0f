import { Inject, Injectable, Logger } from '@nestjs/common';
import { TemplateBuilderEnv, describeError } from '@kiln/config';
import {
  BuildState,
  BuildTemplateResult,
  ENVD_COMPAT_VERSION,
  TemplateBuildDefinition,
  TemplateBuildLogLevel,
} from '@kiln/contracts';
import type { BuildStepDone, BuildTemplateEvent, BuildTemplateRequest } from '@kiln/proto/hostagent';
import { BuildCancellations } from './build-cancellations';
import { BuildHost, BuildHostClient } from './build-host-client';
import { BuildHostPicker } from './build-host-picker';
import { BuildLogPublisher, BuildLogSink } from './build-log-sink';
import { BuildRequestResolver } from './build-request';
import {
  BuildCancelledError,
  BuildDefinitionError,
  BuildInfrastructureError,
  BuildStepFailedError,
  BuildTimeoutError,
  TemplateBuildFailure,
} from './template-build.errors';
import { ReadyBuild, StoredBuild, TemplateBuildStore } from './template-build.store';

export const BUILD_LOG_PUBLISHER = Symbol('BUILD_LOG_PUBLISHER');

/** Which attempt of the job this is (1-based) and how many it has: the last one's failure ends the build. */
export interface BuildAttempt {
  number: number;
  of: number;
}

/** How often a running build re-reads its cancelRequested flag (the NATS cancel is the fast path). */
export const CANCEL_POLL_MS = 2_000;

const LEVELS: readonly TemplateBuildLogLevel[] = ['debug', 'info', 'warn', 'error'];

/** A step's label in the log: E2B's `[n/N] TYPE args`, `base` for step 0 and `finalize` for N+1. */
export function stepLabel(step: number, request: Pick<BuildTemplateRequest, 'steps'>): string {
  if (step === 0) return '[base]';
  const defined = request.steps[step - 1];
  if (!defined) return '[finalize]';
  return `[${step}/${request.steps.length}] ${defined.type}${defined.args.length ? ` ${defined.args.join(' ')}` : ''}`;
}

/** The log line a finished step gets; a cached one says so (what a rebuild of an unchanged prefix shows). */
export function stepDoneMessage(done: BuildStepDone, request: Pick<BuildTemplateRequest, 'steps'>): string {
  const label = stepLabel(done.step, request);
  return done.cached ? `CACHED ${label}` : `${label} done in ${(done.durationMs / 1000).toFixed(1)} s`;
}

/**
 * Runs one attempt of a build job: the build row's definition → a host's BuildTemplate stream → the build's log
 * (stored and published) and state. waiting → building → ready | error; a failing user step, a cancel, a timeout or
 * a definition that cannot run end it at once; an infrastructure failure ends it only on the job's last attempt
 * (the error is rethrown for BullMQ either way, which retries only retryable failures).
 */
@Injectable()
export class TemplateBuildRunner {
  private readonly logger = new Logger(TemplateBuildRunner.name);

  constructor(
    private readonly env: TemplateBuilderEnv,
    private readonly store: TemplateBuildStore,
    private readonly requests: BuildRequestResolver,
    private readonly hosts: BuildHostPicker,
    private readonly client: BuildHostClient,
    private readonly cancellations: BuildCancellations,
    @Inject(BUILD_LOG_PUBLISHER) private readonly publish: BuildLogPublisher,
  ) {}

  async run(buildId: string, attempt: BuildAttempt = { number: 1, of: 1 }): Promise<BuildTemplateResult> {
    const build = await this.store.load(buildId);
    if (!build) throw new BuildDefinitionError(`build ${buildId} does not exist`);
    // A job run again after its build ended (a duplicate, a stalled job redelivered) changes nothing.
    if (build.state === BuildState.Ready || build.state === BuildState.Error) return { buildId, state: build.state };
    const sink = await BuildLogSink.open(buildId, this.store, this.publish);
    const tracked = this.cancellations.track(buildId);
    try {
      if (build.cancelRequested) throw new BuildCancelledError();
      if (!build.definition) throw new BuildDefinitionError('the build has no definition: it was never started');
      if (!(await this.store.markBuilding(buildId))) return await this.finalState(buildId);
      const definition = build.definition;
      const request = await this.requests.resolve({ ...build, definition });
      const host = await this.hosts.pick({
        previousBuildHostId: await this.store.lastBuildHost(build.templateId),
        baseTemplateId: definition.baseTemplate?.templateId,
        memoryMib: build.memoryMib,
      });
      sink.add('info', `building on host ${host.id}${attempt.number > 1 ? ` (attempt ${attempt.number} of ${attempt.of})` : ''}`, 0);
      const ready = await this.stream(build, definition, host, request, sink, tracked.signal);
      await sink.flush();
      if (!(await this.store.markReady(buildId, ready))) return await this.finalState(buildId);
      sink.add('info', 'build ready', request.steps.length + 1);
      await sink.close();
      this.logger.log(`build ${buildId} of template ${build.templateId} ready on host ${host.id}`);
      return { buildId, state: BuildState.Ready };
    } catch (error) {
      const failure = error instanceof TemplateBuildFailure ? error : new BuildInfrastructureError(describeError(error));
      const last = !failure.retryable || attempt.number >= attempt.of;
      if (last) {
        sink.add('error', failure instanceof BuildCancelledError ? 'build cancelled' : `build failed: ${failure.message}`, failure.step);
        await sink.close();
        await this.store.markError(buildId, failure.message, failure.step);
        this.logger.log(`build ${buildId} failed${failure.step !== undefined ? ` in step ${failure.step}` : ''}: ${failure.message}`);
      } else {
        sink.add('warn', `attempt ${attempt.number} of ${attempt.of} failed: ${failure.message}; retrying`);
        await sink.close();
        this.logger.warn(`build ${buildId} attempt ${attempt.number} of ${attempt.of} failed: ${failure.message}`);
      }
      throw failure;
    } finally {
      tracked.done();
    }
  }

  /** The state a build some other party ended is in (the job reports it rather than failing). */
  private async finalState(buildId: string): Promise<BuildTemplateResult> {
    const build = await this.store.load(buildId);
    return { buildId, state: build?.state === BuildState.Ready ? BuildState.Ready : BuildState.Error };
  }

  /** Streams the host's events into the log until the result; throws the failure the stream ended with. */
  private async stream(
    build: StoredBuild,
    definition: TemplateBuildDefinition,
    host: BuildHost,
    request: BuildTemplateRequest,
    sink: BuildLogSink,
    signal: AbortSignal,
  ): Promise<ReadyBuild> {
    const call = this.client.start(host, request);
    let stopped: 'cancelled' | 'timeout' | undefined;
    let currentStep: number | undefined;
    const stop = (why: 'cancelled' | 'timeout') => {
      stopped ??= why;
      call.cancel();
    };
    const onAbort = () => stop('cancelled');
    signal.addEventListener('abort', onAbort);
    const poll = setInterval(() => {
      this.store.cancelRequested(build.id).then(
        (requested) => requested && stop('cancelled'),
        (error) => this.logger.debug(`build ${build.id}: cancel flag unreadable: ${describeError(error)}`),
      );
    }, CANCEL_POLL_MS);
    const deadline = setTimeout(() => stop('timeout'), this.env.BUILD_TIMEOUT_SECONDS * 1000);
    try {
      let result: BuildTemplateEvent['result'];
      try {
        for await (const event of call.events) {
          if (stopped) break;
          if (event.log) {
            currentStep = event.log.step;
            const level = LEVELS.includes(event.log.level as TemplateBuildLogLevel) ? (event.log.level as TemplateBuildLogLevel) : 'info';
            sink.add(level, event.log.message, event.log.step, event.log.atMs ? new Date(event.log.atMs) : new Date());
          } else if (event.step) {
            currentStep = event.step.step + 1;
            sink.add('info', stepDoneMessage(event.step, request), event.step.step);
          } else if (event.failed) {
            call.cancel();
            throw new BuildStepFailedError(String(event.failed.step), `${stepLabel(event.failed.step, request)}: ${event.failed.message}`);
          } else if (event.result) {
            result = event.result;
          }
        }
      } catch (error) {
        // What a cancelled call throws (if anything) is the cancel's doing, not the host's.
        if (!stopped) throw error;
      }
      if (stopped === 'cancelled') throw new BuildCancelledError();
      if (stopped === 'timeout') throw new BuildTimeoutError(this.env.BUILD_TIMEOUT_SECONDS, currentStep === undefined ? undefined : String(currentStep));
      if (!result) throw new BuildInfrastructureError(`host ${host.id} ended the build without a result`);
      return {
        hostId: host.id,
        diskMib: result.diskMib || build.diskMib,
        envdVersion: result.envdVersion || ENVD_COMPAT_VERSION,
        vcpus: result.vcpus,
        memoryMib: result.memoryMib,
        runtime: { envs: result.envs ?? {}, workdir: result.workdir, user: result.user },
        artifacts: (result.artifacts ?? []).map((a) => ({ name: a.name, bytes: Number(a.bytes), sha256: a.sha256 })),
        startCmd: result.startCmd || definition.startCmd,
        readyCmd: result.readyCmd || definition.readyCmd,
      };
    } finally {
      signal.removeEventListener('abort', onAbort);
      clearInterval(poll);
      clearTimeout(deadline);
    }
  }
}
