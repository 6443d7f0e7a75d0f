import { ErrorCode, KilnError } from '@kiln/contracts';

/** A TemplateBuildStartV2 (or a create request) the builder cannot run; the message names the step or field. */
export class InvalidBuildDefinitionError extends KilnError {
  constructor(message: string) {
    super(ErrorCode.InvalidArgument, message);
  }
}

/**
 * The name belongs to another team's template or to a public one (403, as E2B answers; the SDK's `exists` reads 403
 * as "taken"), or to one of the team's own snapshots (409).
 */
export class TemplateNameTakenError extends KilnError {
  constructor(name: string, bySnapshot: boolean) {
    super(
      bySnapshot ? ErrorCode.Conflict : ErrorCode.PermissionDenied,
      bySnapshot ? `template name '${name}' is the name of one of your snapshots` : `template name '${name}' is already taken`,
    );
  }
}

/** Starting a build that is not waiting for its definition (started before, finished, or cancelled). */
export class BuildNotWaitingError extends KilnError {
  constructor(buildId: string, state: string) {
    super(ErrorCode.Conflict, `build ${buildId} is ${state === 'waiting' ? 'already started' : state}; request a new build with POST /v3/templates`);
  }
}

/** Deleting a template whose builds sandboxes or snapshots still use. */
export class TemplateInUseError extends KilnError {
  constructor(templateId: string, uses: { sandboxes: number; snapshots: number }) {
    const what = [
      uses.sandboxes ? `${uses.sandboxes} sandbox${uses.sandboxes === 1 ? '' : 'es'} (running or paused)` : '',
      uses.snapshots ? `${uses.snapshots} snapshot${uses.snapshots === 1 ? '' : 's'}` : '',
    ].filter(Boolean);
    super(ErrorCode.Conflict, `template ${templateId} is still used by ${what.join(' and ')}; kill them or delete the snapshots first`);
  }
}

/** Deleting a public platform template (the team may use it, not delete it). */
export class PublicTemplateDeleteError extends KilnError {
  constructor(ref: string) {
    super(ErrorCode.PermissionDenied, `template ${ref} is a public platform template; it cannot be deleted through the API`);
  }
}

/** An upload URL whose token is missing, forged, expired or for another archive. */
export class UploadTokenRejectedError extends KilnError {
  constructor() {
    super(ErrorCode.PermissionDenied, 'the upload URL is invalid or has expired; ask GET /templates/{templateID}/files/{hash} for a new one');
  }
}

export class UploadTooLargeError extends KilnError {
  constructor(limitBytes: number) {
    super(ErrorCode.PayloadTooLarge, `the archive is larger than this deployment accepts (${limitBytes} bytes)`);
  }
}

/** The archive's body ended early (the client aborted, or sent less than it announced); nothing was stored. */
export class UploadInterruptedError extends KilnError {
  constructor() {
    super(ErrorCode.InvalidArgument, 'the upload ended before the whole archive arrived; nothing was stored');
  }
}

/** The build queue (Redis) did not take the job; nothing was started. */
export class BuildQueueUnavailableError extends KilnError {
  constructor(detail: string) {
    super(ErrorCode.Unavailable, `the build queue is unavailable (${detail}); try again`);
  }
}
