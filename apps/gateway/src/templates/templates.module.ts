import { Module } from '@nestjs/common';
import { ARTIFACT_STORE, LocalArtifactStore } from '@kiln/artifacts';
import { GatewayEnv } from '@kiln/config';
import { TemplatesController } from './templates.controller';
import { TemplatesService } from './templates.service';
import { TemplateBuildsController } from './template-builds.controller';
import { TemplateBuildsService } from './template-builds.service';
import { TemplateBuildQueue } from './template-build-queue';
import { SandboxesModule } from '../sandboxes/sandboxes.module';

@Module({
  imports: [SandboxesModule],
  controllers: [TemplatesController, TemplateBuildsController],
  providers: [
    TemplatesService,
    TemplateBuildsService,
    TemplateBuildQueue,
    // Uploaded build-context archives go here; deleting a template removes its built files from here.
    { provide: ARTIFACT_STORE, inject: [GatewayEnv], useFactory: (env: GatewayEnv) => new LocalArtifactStore(env.KILN_ARTIFACT_DIR) },
  ],
})
export class TemplatesModule {}
