import { Module, type DynamicModule } from '@nestjs/common';
import type { HostResourceModules } from '../host-modules';
import { VmmModule } from '../vmm';
import { ClonePool } from './clone-pool';
import { CLONE_POOL_OPTIONS, type ClonePoolOptions } from './clone-pool.options';

/** Restored, paused clones of the templates in use, ready to become sandboxes (see ClonePool). */
@Module({})
export class ClonePoolModule {
  static register(host: Pick<HostResourceModules, 'network' | 'rootfs' | 'snapshots'>, options: ClonePoolOptions): DynamicModule {
    return {
      module: ClonePoolModule,
      imports: [host.network, host.rootfs, host.snapshots, VmmModule],
      providers: [{ provide: CLONE_POOL_OPTIONS, useValue: options }, ClonePool],
      exports: [ClonePool],
    };
  }
}
