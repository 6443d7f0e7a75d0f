import { randomBytes } from 'node:crypto';
import { access, mkdir, readlink, rename, rm, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Logger } from '@nestjs/common';
import { ArtifactIntegrityError, type ArtifactStore } from '@kiln/artifacts';
import { TemplateArtifactCorruptError, TemplateFetchError } from './template.errors';

/** The artifact-store prefix of a template build's files: `templates/<templateId>/<buildId>/`. */
export function templateArtifactPrefix(templateId: string, buildId: string): string {
  return `templates/${templateId}/${buildId}/`;
}

/** Fetches of one build in flight in this process, shared by every store instance over the same data dir. */
const inflight = new Map<string, Promise<boolean>>();

/**
 * Brings a template build this host lacks from the artifact store: every file under
 * `templates/<templateId>/<buildId>/` is copied into a staging directory next to the build's place, each verified
 * against the sha256 the store recorded for it, and the directory is renamed into
 * `<data>/templates/<templateId>/<buildId>/` only once all of them are there. A failure (a corrupted file, a
 * missing template.json) removes the staging directory: the build is never half there. Concurrent fetches of one
 * build share one; a fetch that finds the build already in place (another process won the rename) succeeds.
 * The template snapshot is then made on first use, as for any build.
 */
export class TemplateFetcher {
  private readonly logger = new Logger(TemplateFetcher.name);

  constructor(
    private readonly templatesRoot: string,
    private readonly artifacts: ArtifactStore,
  ) {}

  /**
   * True when the build is in place (fetched now, or by someone else meanwhile); false when the artifact store has
   * no such build (or the build's directory exists without template.json, which is not this fetcher's to replace).
   * `templateId` and `buildId` must already be checked plain names.
   */
  fetch(templateId: string, buildId: string): Promise<boolean> {
    const key = `${this.templatesRoot}\0${templateId}\0${buildId}`;
    let pending = inflight.get(key);
    if (!pending) {
      pending = this.fetchOnce(templateId, buildId).finally(() => inflight.delete(key));
      inflight.set(key, pending);
    }
    return pending;
  }

  private async fetchOnce(templateId: string, buildId: string): Promise<boolean> {
    const templateDir = join(this.templatesRoot, templateId);
    const target = join(templateDir, buildId);
    if (await exists(target)) return exists(join(target, 'template.json'));
    const prefix = templateArtifactPrefix(templateId, buildId);
    let keys: string[];
    try {
      keys = await this.artifacts.list(prefix);
    } catch (error) {
      throw new TemplateFetchError(`template ${templateId}/${buildId}: the artifact store cannot be read: ${(error as Error).message}`);
    }
    if (!keys.length) return false;
    if (!keys.includes(`${prefix}template.json`)) throw new TemplateFetchError(`template ${templateId}/${buildId}: the artifact store holds no template.json for it`);

    const started = performance.now();
    // A dot name: never taken for a build by the store's listing (build ids start with a letter or digit).
    const staging = join(templateDir, `.fetch-${buildId}-${randomBytes(6).toString('hex')}`);
    let bytes = 0;
    try {
      await mkdir(staging, { recursive: true });
      for (const key of keys) {
        const info = await this.artifacts.fetchTo(key, join(staging, key.slice(prefix.length)));
        bytes += info.bytes;
      }
      try {
        await rename(staging, target);
      } catch (error) {
        // Another process put the build in place first: its copy was verified as this one was.
        const code = (error as NodeJS.ErrnoException).code;
        if ((code === 'ENOTEMPTY' || code === 'EEXIST') && (await exists(join(target, 'template.json')))) return true;
        throw error;
      }
    } catch (error) {
      if (error instanceof ArtifactIntegrityError) throw new TemplateArtifactCorruptError(`template ${templateId}/${buildId}: refused: ${error.message}`);
      throw error instanceof TemplateFetchError ? error : new TemplateFetchError(`template ${templateId}/${buildId}: fetch failed: ${(error as Error).message}`);
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
    await this.adoptAsCurrent(templateDir, buildId);
    this.logger.log(`fetched template ${templateId}/${buildId} (${keys.length} files, ${(bytes / 1048576).toFixed(1)} MiB) in ${Math.round(performance.now() - started)} ms`);
    return true;
  }

  /**
   * A template with no usable `current` build gets this one, so the host reports the template as cached (HostInfo
   * lists templates by their current build) and the scheduler prefers this host for it. An existing current build
   * is left alone: the fetched one may be an older tag.
   */
  private async adoptAsCurrent(templateDir: string, buildId: string): Promise<void> {
    const current = join(templateDir, 'current');
    const pointsAt = await readlink(current).catch(() => undefined);
    if (pointsAt && (await exists(join(templateDir, pointsAt, 'template.json')))) return;
    const link = join(dirname(current), `.current-${randomBytes(6).toString('hex')}`);
    try {
      await symlink(buildId, link);
      await rename(link, current);
    } catch (error) {
      await rm(link, { force: true });
      this.logger.warn(`template ${templateDir}: could not point current at ${buildId}: ${(error as Error).message}`);
    }
  }
}

function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
