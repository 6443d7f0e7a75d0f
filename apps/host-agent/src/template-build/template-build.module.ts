import { Module, type DynamicModule } from '@nestjs/common';
import { ARTIFACT_STORE, LocalArtifactStore } from '@kiln/artifacts';
import { VmmModule } from '../vmm';
import { TEMPLATE_BUILD_OPTIONS, type TemplateBuildOptions } from './template-build.options';
import { TemplateBuildService } from './template-build.service';

export interface TemplateBuildModuleOptions extends TemplateBuildOptions {
  /** KILN_ARTIFACT_DIR: uploaded build contexts are read from it, built templates published to it. */
  artifactDir: string;
}

export interface TemplateBuildModuleImports {
  /** The app's NetworkModule (build VMs lease their slots from its pool). */
  network: DynamicModule;
  /** The app's TemplateModule (the runtime, base templates, results). */
  templates: DynamicModule;
  /** The app's SnapshotModule (a build ends with its template's snapshot). */
  snapshots: DynamicModule;
  /** BaseLayersModule.register(...): bases from images and Debian suites. */
  baseLayers: DynamicModule;
}

/** Template builds (BuildTemplate): build VMs, the layer cache, the result's template dir, snapshot and artifacts. */
@Module({})
export class TemplateBuildModule {
  static register(imports: TemplateBuildModuleImports, options: TemplateBuildModuleOptions): DynamicModule {
    const { artifactDir, ...buildOptions } = options;
    return {
      module: TemplateBuildModule,
      imports: [imports.network, imports.templates, imports.snapshots, imports.baseLayers, VmmModule],
      providers: [
        { provide: TEMPLATE_BUILD_OPTIONS, useValue: buildOptions },
        { provide: ARTIFACT_STORE, useValue: new LocalArtifactStore(artifactDir) },
        TemplateBuildService,
      ],
      exports: [TemplateBuildService, ARTIFACT_STORE],
    };
  }
}

