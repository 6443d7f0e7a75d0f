export * from './template-build.errors';
export * from './template-build.module';
export { TEMPLATE_BUILD_OPTIONS, type TemplateBuildOptions } from './template-build.options';
export { TemplateBuildService, type BuiltTemplateManifest } from './template-build.service';
