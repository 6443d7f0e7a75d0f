import { readFile, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { Injectable } from '@nestjs/common';
import { TemplateRepository } from '@kiln/db';
import { ENVD_COMPAT_VERSION, ErrorCode, KilnError, RegisterTemplateJob, RegisterTemplateResult } from '@kiln/contracts';

interface TemplateManifestFile {
  templateId: string;
  buildId: string;
  vcpus: number;
  memoryMib: number;
  rootfs: string;
}

/**
 * Publishes a built template to the control plane: the template, its alias and a
 * ready build keyed by the image's content hash, so re-registering the same image is a no-op.
 */
@Injectable()
export class TemplateRegistrationService {
  constructor(private readonly templates: TemplateRepository) {}

  async register(job: RegisterTemplateJob): Promise<RegisterTemplateResult> {
    if (!job?.manifestPath || !isAbsolute(job.manifestPath)) {
      throw new KilnError(ErrorCode.InvalidArgument, 'manifestPath must be an absolute path to template.json');
    }
    let manifest: TemplateManifestFile;
    try {
      manifest = JSON.parse(await readFile(job.manifestPath, 'utf8')) as TemplateManifestFile;
    } catch (error) {
      throw new KilnError(ErrorCode.NotFound, `cannot read template manifest ${job.manifestPath}: ${(error as Error).message}`);
    }
    for (const field of ['templateId', 'buildId', 'vcpus', 'memoryMib', 'rootfs'] as const) {
      if (manifest[field] === undefined) throw new KilnError(ErrorCode.InvalidArgument, `template manifest lacks ${field}`);
    }
    const rootfs = await stat(isAbsolute(manifest.rootfs) ? manifest.rootfs : join(dirname(job.manifestPath), manifest.rootfs));
    await this.templates.ensurePublicTemplate({
      templateId: manifest.templateId,
      alias: job.alias ?? manifest.templateId,
      vcpus: manifest.vcpus,
      memoryMib: manifest.memoryMib,
      diskMib: Math.ceil(rootfs.size / 1024 / 1024),
      envdVersion: ENVD_COMPAT_VERSION,
      contentHash: manifest.buildId,
    });
    return { templateId: manifest.templateId, buildId: manifest.buildId };
  }
}
