import { Module, type DynamicModule } from '@nestjs/common';
import { TEMPLATE_STORE_OPTIONS, TemplateStore, type TemplateStoreOptions } from './template-store';

/** The on-disk template store (templates built by tools/guest-image and their snapshots). */
@Module({})
export class TemplateModule {
  static register(options: Partial<TemplateStoreOptions> = {}): DynamicModule {
    const resolved: TemplateStoreOptions = { dataDir: options.dataDir ?? process.env.KILN_DATA_DIR ?? '/var/lib/kiln' };
    return {
      module: TemplateModule,
      providers: [{ provide: TEMPLATE_STORE_OPTIONS, useValue: resolved }, TemplateStore],
      exports: [TemplateStore],
    };
  }
}
