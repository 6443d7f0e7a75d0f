/** Base class for template store failures. */
export class TemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A template or build id that is not a plain name (would escape the store, or is empty). */
export class InvalidTemplateIdError extends TemplateError {}

/** No such template, or no such build of it, on this host. */
export class TemplateNotFoundError extends TemplateError {}

/** The build directory exists but its template.json or files are unusable. */
export class CorruptTemplateError extends TemplateError {}

/**
 * A build this host lacks could not be fetched from the artifact store (unreadable, incomplete). A subclass of
 * TemplateNotFoundError: to the caller the host still does not have the build (CreateSandbox: FAILED_PRECONDITION).
 */
export class TemplateFetchError extends TemplateNotFoundError {}

/** A fetched artifact does not hash to the sha256 the store recorded for it: refused, nothing kept. */
export class TemplateArtifactCorruptError extends TemplateFetchError {}
