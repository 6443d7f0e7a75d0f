import { Module, type DynamicModule, type FactoryProvider, type ModuleMetadata } from '@nestjs/common';
import { NETWORK_OPTIONS, resolveNetworkOptions, type NetworkOptions } from './network.options';
import { NetworkSlotPool } from './network-slot-pool';
import { SlotProvisioner } from './slot-provisioner';

export interface NetworkModuleAsyncOptions extends Pick<ModuleMetadata, 'imports'> {
  useFactory: (...deps: never[]) => Partial<NetworkOptions> | Promise<Partial<NetworkOptions>>;
  inject?: FactoryProvider['inject'];
}

/**
 * Network slots for sandboxes. `register()` takes options directly; `registerAsync()` lets the app bind them to its
 * env config. Either way they are validated (NetworkConfigError) when the module is instantiated.
 */
@Module({})
export class NetworkModule {
  static register(options: Partial<NetworkOptions> = {}): DynamicModule {
    return NetworkModule.build([], { provide: NETWORK_OPTIONS, useFactory: () => resolveNetworkOptions(options) });
  }

  static registerAsync(options: NetworkModuleAsyncOptions): DynamicModule {
    return NetworkModule.build(options.imports ?? [], {
      provide: NETWORK_OPTIONS,
      inject: options.inject ?? [],
      useFactory: async (...deps: never[]) => resolveNetworkOptions(await options.useFactory(...deps)),
    });
  }

  private static build(imports: ModuleMetadata['imports'], optionsProvider: FactoryProvider): DynamicModule {
    return {
      module: NetworkModule,
      imports,
      providers: [optionsProvider, SlotProvisioner, NetworkSlotPool],
      exports: [NetworkSlotPool, NETWORK_OPTIONS],
    };
  }
}
