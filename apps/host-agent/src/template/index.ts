export * from './template.errors';
export * from './template.module';
export { coldBootSpec } from './cold-boot-spec';
export type { ColdBootPlacement } from './cold-boot-spec';
export { TEMPLATE_STORE_OPTIONS, TemplateStore } from './template-store';
export { TemplateFetcher, templateArtifactPrefix } from './template-fetcher';
export type { TemplateBuild, TemplateManifest, TemplateStoreOptions, TemplateSummary } from './template-store';
