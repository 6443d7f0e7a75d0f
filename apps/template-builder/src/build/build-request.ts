import { Injectable } from '@nestjs/common';
import { LocalArtifactStore } from '@kiln/artifacts';
import { TemplateBuildDefinition } from '@kiln/contracts';
import type { BuildStep, BuildTemplateRequest } from '@kiln/proto/hostagent';
import { TemplateBuildStore, StoredBuild } from './template-build.store';
import { BuildDefinitionError } from './template-build.errors';

/** The artifact key of a team's uploaded COPY archive (as the gateway stores it). */
export function filesArtifactKey(teamId: string, filesHash: string): string {
  return `files/${teamId}/${filesHash}`;
}

/**
 * Turns a stored build and its definition into the host's BuildTemplateRequest: the base as host identities, COPY
 * archives as local paths in the artifact store with the sha256 they were stored with (the host verifies it).
 * Anything the gateway checked but is gone now (an archive deleted since) fails the build naming the step.
 */
@Injectable()
export class BuildRequestResolver {
  constructor(
    private readonly artifacts: LocalArtifactStore,
    private readonly store: TemplateBuildStore,
  ) {}

  async resolve(build: StoredBuild & { definition: TemplateBuildDefinition }): Promise<BuildTemplateRequest> {
    const definition = build.definition;
    const base = definition.baseTemplate
      ? { template: { templateId: definition.baseTemplate.templateId, buildId: definition.baseTemplate.hostBuildId }, registry: undefined }
      : definition.fromImage
        ? {
            image: definition.fromImage,
            registry: definition.fromImageRegistry
              ? { username: definition.fromImageRegistry.username, password: definition.fromImageRegistry.password }
              : undefined,
          }
        : undefined;
    if (!base) throw new BuildDefinitionError('the build definition names no base (fromTemplate or fromImage)', '0');
    const steps: BuildStep[] = [];
    for (const [index, step] of (definition.steps ?? []).entries()) {
      const number = String(index + 1);
      const resolved: BuildStep = {
        type: step.type,
        args: step.args ?? [],
        filesHash: step.filesHash ?? '',
        filesPath: '',
        filesSha256: '',
        force: step.force ?? false,
      };
      if (step.type === 'COPY') {
        if (!step.filesHash || !build.teamId) throw new BuildDefinitionError(`step ${number} (COPY): no uploaded files`, number);
        const key = filesArtifactKey(build.teamId, step.filesHash);
        const [stored, recorded] = await Promise.all([this.artifacts.stat(key), this.store.filesSha256(build.teamId, step.filesHash)]);
        if (!stored) throw new BuildDefinitionError(`step ${number} (COPY): the files ${step.filesHash} were never uploaded or are gone`, number);
        const sha256 = step.filesSha256 ?? recorded ?? stored.sha256;
        if (sha256 !== stored.sha256) {
          throw new BuildDefinitionError(`step ${number} (COPY): the stored files ${step.filesHash} are not the ones uploaded (sha256 differs)`, number);
        }
        resolved.filesPath = this.artifacts.pathOf(key);
        resolved.filesSha256 = sha256;
      }
      steps.push(resolved);
    }
    return {
      templateId: build.templateId,
      buildId: build.id,
      base,
      steps,
      startCmd: definition.startCmd ?? '',
      readyCmd: definition.readyCmd ?? '',
      vcpus: build.vcpus,
      memoryMib: build.memoryMib,
      // The host sizes the disk to the content plus headroom; what it made is stored when the build is ready.
      diskMib: 0,
      force: definition.force ?? false,
    };
  }
}
