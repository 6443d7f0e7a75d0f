import { BuildState } from '../states/template-state';

/** Queue and job contracts of the template builder (producers: `npm run up`, the gateway's template API). */
export const TEMPLATE_BUILD_QUEUE = 'template-builds';

/** Job name of RegisterTemplateJob. */
export const REGISTER_TEMPLATE_JOB = 'register-template';

export interface RegisterTemplateJob {
  /** Absolute path of a template build's template.json (written by tools/guest-image/build.sh). */
  manifestPath: string;
  alias?: string;
}

export interface RegisterTemplateResult {
  templateId: string;
  buildId: string;
}

/**
 * Job name of BuildTemplateJob: runs the build whose definition the gateway stored. The gateway adds it with
 * jobId = buildId (so a repeated start enqueues nothing new) and BUILD_TEMPLATE_JOB_OPTIONS.
 */
export const BUILD_TEMPLATE_JOB = 'build-template';

/**
 * BullMQ options of a build job: infrastructure failures (host unreachable, gRPC errors) are retried with backoff;
 * a failing user step ends the job at once (the worker throws UnrecoverableError). Finished jobs are dropped: the
 * build row is the record.
 */
export const BUILD_TEMPLATE_JOB_OPTIONS = {
  attempts: 3,
  backoff: { type: 'exponential' as const, delay: 5_000 },
  removeOnComplete: true,
  removeOnFail: 1000,
};

export interface BuildTemplateJob {
  /** `template_builds.id`. */
  buildId: string;
}

/** How a build job ended (the build row holds the details). */
export interface BuildTemplateResult {
  buildId: string;
  state: BuildState.Ready | BuildState.Error;
}
