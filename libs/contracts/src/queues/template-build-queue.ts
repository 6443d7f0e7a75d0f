/** Queue and job contracts of the template builder (producers: `npm run up`, later the public template API). */
export const TEMPLATE_BUILD_QUEUE = 'template-builds';

export interface RegisterTemplateJob {
  /** Absolute path of a template build's template.json (written by tools/guest-image/build.sh). */
  manifestPath: string;
  alias?: string;
}

export interface RegisterTemplateResult {
  templateId: string;
  buildId: string;
}
