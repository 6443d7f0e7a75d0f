import { Module, type DynamicModule } from '@nestjs/common';
import { TEMPLATE_STORE_OPTIONS, TemplateStore, type TemplateStoreOptions } from './template-store';

/** The on-disk template store (templates built by tools/guest-image and their snapshots). */
@Module({})
export class TemplateModule {
  /** `dataDir`: the agent's KILN_DATA_DIR, from its validated env. */
  static register(options: TemplateStoreOptions): DynamicModule {
    return {
      module: TemplateModule,
      providers: [{ provide: TEMPLATE_STORE_OPTIONS, useValue: { dataDir: options.dataDir } }, TemplateStore],
      exports: [TemplateStore],
    };
  }
}
