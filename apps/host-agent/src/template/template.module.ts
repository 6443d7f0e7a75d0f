import { Module, type DynamicModule } from '@nestjs/common';
import { LocalArtifactStore } from '@kiln/artifacts';
import { HostAgentEnv } from '@kiln/config';
import { TemplateFetcher } from './template-fetcher';
import { TEMPLATE_STORE_OPTIONS, TemplateStore, type TemplateStoreOptions } from './template-store';

/** The on-disk template store (templates built by tools/guest-image and their snapshots). */
@Module({})
export class TemplateModule {
  /**
   * `dataDir`: the agent's KILN_DATA_DIR, from its validated env. Builds the host lacks are fetched from the artifact
   * store at `artifactDir` (default: the agent's KILN_ARTIFACT_DIR; neither: no fetching).
   */
  static register(options: TemplateStoreOptions & { artifactDir?: string }): DynamicModule {
    return {
      module: TemplateModule,
      providers: [
        { provide: TEMPLATE_STORE_OPTIONS, useValue: { dataDir: options.dataDir } },
        {
          provide: TemplateFetcher,
          useFactory: (env?: HostAgentEnv) => {
            const artifactDir = options.artifactDir ?? env?.KILN_ARTIFACT_DIR;
            return artifactDir ? new TemplateFetcher(`${options.dataDir}/templates`, new LocalArtifactStore(artifactDir)) : undefined;
          },
          inject: [{ token: HostAgentEnv, optional: true }],
        },
        TemplateStore,
      ],
      exports: [TemplateStore],
    };
  }
}
