export * from './template.errors';
export * from './template.module';
export { TEMPLATE_STORE_OPTIONS, TemplateStore } from './template-store';
export type { TemplateBuild, TemplateManifest, TemplateStoreOptions, TemplateSummary } from './template-store';
