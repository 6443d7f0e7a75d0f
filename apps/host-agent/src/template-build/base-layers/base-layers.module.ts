import { Module, type DynamicModule } from '@nestjs/common';
import { BaseLayersConfig } from './base-layers.config';
import { BaseLayers } from './base-layers';
import { KilnRuntimeSource } from './kiln-runtime';

export interface BaseLayersModuleOptions {
  /** BaseLayersConfig.from(env) in the agent. */
  config: BaseLayersConfig;
  /** A module exporting TemplateStore (the agent's TemplateModule.register(...)): the runtime comes from `base`. */
  templates: DynamicModule;
}

/** Base layers of template builds: images from registries and Debian suites, made bootable by Kiln's runtime. */
@Module({})
export class BaseLayersModule {
  static register(options: BaseLayersModuleOptions): DynamicModule {
    return {
      module: BaseLayersModule,
      imports: [options.templates],
      providers: [{ provide: BaseLayersConfig, useValue: options.config }, KilnRuntimeSource, BaseLayers],
      exports: [BaseLayers],
    };
  }
}
