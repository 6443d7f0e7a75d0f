import { Module, type DynamicModule, type ModuleMetadata } from '@nestjs/common';
import { NetworkSlotPool } from '../network';
import { TemplateModule } from '../template';
import { VmmModule } from '../vmm';
import { SNAPSHOT_NETWORK, SNAPSHOT_OPTIONS, TemplateSnapshots, type SnapshotOptions } from './template-snapshots';

export interface SnapshotModuleOptions extends Partial<Omit<SnapshotOptions, 'guestNameservers'>>, Pick<SnapshotOptions, 'guestNameservers'> {
  /** Must include the app's NetworkModule instance (the template boot leases a slot from its pool). */
  imports: NonNullable<ModuleMetadata['imports']>;
  /** Kiln data dir (templates, scratch space for template boots): the agent's KILN_DATA_DIR. */
  dataDir: string;
}

/** Template snapshots: creation (template boot + save) and clone restore. */
@Module({})
export class SnapshotModule {
  static register(options: SnapshotModuleOptions): DynamicModule {
    const { dataDir } = options;
    const resolved: SnapshotOptions = {
      bootTimeoutMs: options.bootTimeoutMs ?? 120_000,
      runDir: options.runDir ?? `${dataDir}/run/template-boot`,
      guestNameservers: options.guestNameservers,
      readyTimeoutMs: options.readyTimeoutMs ?? 120_000,
    };
    return {
      module: SnapshotModule,
      imports: [...options.imports, VmmModule, TemplateModule.register({ dataDir })],
      providers: [
        { provide: SNAPSHOT_OPTIONS, useValue: resolved },
        { provide: SNAPSHOT_NETWORK, useExisting: NetworkSlotPool },
        TemplateSnapshots,
      ],
      exports: [TemplateSnapshots],
    };
  }
}
