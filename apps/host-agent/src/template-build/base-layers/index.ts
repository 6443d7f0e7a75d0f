export * from './base-layers.errors';
export type { BaseLayerImageConfig, PreparedBaseLayer, RegistryCredentials } from './base-layers.types';
export { BaseLayers } from './base-layers';
export { BaseLayersConfig } from './base-layers.config';
export { BaseLayersModule, type BaseLayersModuleOptions } from './base-layers.module';
export { KilnRuntimeSource } from './kiln-runtime';
export { resolveBaseSource, parseImageReference, type BaseSource } from './image-reference';
