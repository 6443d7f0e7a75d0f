import { Module } from '@nestjs/common';
import { LocalArtifactStore } from '@kiln/artifacts';
import { TemplateBuilderEnv } from '@kiln/config';
import { NatsConnectionHolder, templateBuildLogsSubject } from '@kiln/messaging';
import { BuildCancelListener, BuildCancellations } from './build-cancellations';
import { BuildHostClient, GrpcBuildHostClient } from './build-host-client';
import { BuildHostPicker } from './build-host-picker';
import { BuildLogPublisher } from './build-log-sink';
import { BuildRequestResolver } from './build-request';
import { BUILD_LOG_PUBLISHER, TemplateBuildRunner } from './template-build.runner';
import { TemplateBuildStore } from './template-build.store';

/** Running template builds on host agents: `build-template` jobs (the worker calls TemplateBuildRunner). */
@Module({
  providers: [
    TemplateBuildStore,
    BuildRequestResolver,
    BuildHostPicker,
    BuildCancellations,
    BuildCancelListener,
    TemplateBuildRunner,
    { provide: BuildHostClient, useClass: GrpcBuildHostClient },
    { provide: LocalArtifactStore, useFactory: (env: TemplateBuilderEnv) => new LocalArtifactStore(env.KILN_ARTIFACT_DIR), inject: [TemplateBuilderEnv] },
    {
      provide: BUILD_LOG_PUBLISHER,
      useFactory: (nats: NatsConnectionHolder): BuildLogPublisher => (buildId, entry) =>
        nats.nc.publish(templateBuildLogsSubject(buildId), JSON.stringify(entry)),
      inject: [NatsConnectionHolder],
    },
  ],
  exports: [TemplateBuildRunner, TemplateBuildStore],
})
export class TemplateBuildModule {}
