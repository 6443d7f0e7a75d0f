import { Module, type DynamicModule, type FactoryProvider, type ModuleMetadata } from '@nestjs/common';
import { FlattenedImages } from './flattened-images';
import { ReflinkSupport } from './reflink-support';
import { RootfsLayers } from './rootfs-layers';
import { ROOTFS_OPTIONS, resolveRootfsOptions, type RootfsOptions } from './rootfs.options';

export interface RootfsModuleAsyncOptions extends Pick<ModuleMetadata, 'imports'> {
  useFactory: (...deps: never[]) => Partial<RootfsOptions> | Promise<Partial<RootfsOptions>>;
  inject?: FactoryProvider['inject'];
}

/** Copy-on-write root disks. Options are validated (RootfsError) when the module is instantiated. */
@Module({})
export class RootfsModule {
  static register(options: Partial<RootfsOptions> = {}): DynamicModule {
    return RootfsModule.build([], { provide: ROOTFS_OPTIONS, useFactory: () => resolveRootfsOptions(options) });
  }

  static registerAsync(options: RootfsModuleAsyncOptions): DynamicModule {
    return RootfsModule.build(options.imports ?? [], {
      provide: ROOTFS_OPTIONS,
      inject: options.inject ?? [],
      useFactory: async (...deps: never[]) => resolveRootfsOptions(await options.useFactory(...deps)),
    });
  }

  private static build(imports: ModuleMetadata['imports'], optionsProvider: FactoryProvider): DynamicModule {
    return {
      module: RootfsModule,
      imports,
      providers: [optionsProvider, ReflinkSupport, FlattenedImages, RootfsLayers],
      exports: [RootfsLayers, ROOTFS_OPTIONS],
    };
  }
}
