import { access, readdir, readFile, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Inject, Injectable, Optional } from '@nestjs/common';
import { CorruptTemplateError, InvalidTemplateIdError, TemplateNotFoundError } from './template.errors';
import { TemplateFetcher } from './template-fetcher';

export const TEMPLATE_STORE_OPTIONS = Symbol('TEMPLATE_STORE_OPTIONS');

export interface TemplateStoreOptions {
  /** Kiln data dir; templates live in <dataDir>/templates/<templateId>/<buildId>/. */
  dataDir: string;
}

/** template.json as written by tools/guest-image/build.sh. */
export interface TemplateManifest {
  templateId: string;
  buildId: string;
  vcpus: number;
  memoryMib: number;
  kernel: string;
  initrd: string;
  rootfs: string;
  rootfsFormat: 'raw' | 'qcow2';
  kernelArgs: string;
  kernelRelease: string;
  agentPort: number;
  createdAt?: string;
  /** Built templates (template-build): what their sandboxes start with, and the command running in the snapshot. */
  envs?: Record<string, string>;
  workdir?: string;
  user?: string;
  startCmd?: string;
  readyCmd?: string;
}

/** One build of a template, with absolute paths. Files are read-only: sandboxes layer on top. */
export interface TemplateBuild {
  templateId: string;
  buildId: string;
  dir: string;
  vcpus: number;
  memoryMib: number;
  kernelPath: string;
  initrdPath: string;
  rootfs: { path: string; format: 'raw' | 'qcow2' };
  kernelArgs: string;
  kernelRelease: string;
  agentPort: number;
  /** Where the template's memory snapshot lives (may not exist yet). */
  snapshotDir: string;
  /** Launched in the template VM before its memory is saved, as `user` in `workdir` with `envs` (built templates). */
  startCmd?: string;
  /** Run until it exits 0 before the memory is saved. */
  readyCmd?: string;
  envs?: Record<string, string>;
  workdir?: string;
  user?: string;
}

export interface TemplateSummary {
  templateId: string;
  currentBuildId: string | undefined;
  buildIds: string[];
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Read side of the on-disk template store: list templates, resolve a template to a build. */
@Injectable()
export class TemplateStore {
  constructor(
    @Inject(TEMPLATE_STORE_OPTIONS) private readonly options: TemplateStoreOptions,
    /** Set: a named build this host lacks is fetched from the artifact store on first use. */
    @Optional() @Inject(TemplateFetcher) private readonly fetcher?: TemplateFetcher,
  ) {}

  get root(): string {
    return join(this.options.dataDir, 'templates');
  }

  async list(): Promise<TemplateSummary[]> {
    const entries = await readdir(this.root, { withFileTypes: true }).catch(() => []);
    const summaries: TemplateSummary[] = [];
    for (const entry of entries) {
      // A template may be a link to a directory elsewhere (built-in templates shared by several data dirs).
      const isDirectory = entry.isDirectory() || (entry.isSymbolicLink() && (await stat(join(this.root, entry.name)).then((s) => s.isDirectory(), () => false)));
      if (!isDirectory || !NAME.test(entry.name)) continue;
      summaries.push(await this.summary(entry.name));
    }
    return summaries.sort((a, b) => a.templateId.localeCompare(b.templateId));
  }

  /** The given build, or the template's current build when buildId is omitted. */
  async resolve(templateId: string, buildId?: string): Promise<TemplateBuild> {
    assertName('template id', templateId);
    if (buildId !== undefined) assertName('build id', buildId);
    const templateDir = join(this.root, templateId);
    const chosen = buildId ?? (await readlink(join(templateDir, 'current')).catch(() => undefined));
    if (!chosen || !NAME.test(chosen)) throw new TemplateNotFoundError(`template ${templateId} has no current build`);
    const dir = join(templateDir, chosen);
    let manifest: TemplateManifest;
    try {
      manifest = JSON.parse(await readFile(join(dir, 'template.json'), 'utf8')) as TemplateManifest;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        if (buildId !== undefined && (await this.fetcher?.fetch(templateId, buildId))) return this.resolve(templateId, buildId);
        throw new TemplateNotFoundError(`template ${templateId} has no build ${chosen}`);
      }
      throw new CorruptTemplateError(`template ${templateId}/${chosen}: unreadable template.json: ${(error as Error).message}`);
    }
    const build: TemplateBuild = {
      templateId,
      buildId: chosen,
      dir,
      vcpus: manifest.vcpus,
      memoryMib: manifest.memoryMib,
      kernelPath: join(dir, plainFile(manifest.kernel, 'kernel', dir)),
      initrdPath: join(dir, plainFile(manifest.initrd, 'initrd', dir)),
      rootfs: { path: join(dir, plainFile(manifest.rootfs, 'rootfs', dir)), format: manifest.rootfsFormat },
      kernelArgs: manifest.kernelArgs,
      kernelRelease: manifest.kernelRelease,
      agentPort: manifest.agentPort,
      snapshotDir: join(dir, 'snapshot'),
      ...optionalStrings(manifest),
    };
    if (!Number.isInteger(build.vcpus) || !Number.isInteger(build.memoryMib) || typeof build.kernelArgs !== 'string') {
      throw new CorruptTemplateError(`template ${templateId}/${chosen}: template.json lacks vcpus/memoryMib/kernelArgs`);
    }
    for (const path of [build.kernelPath, build.initrdPath, build.rootfs.path]) {
      await access(path).catch(() => {
        throw new CorruptTemplateError(`template ${templateId}/${chosen}: ${path} is missing`);
      });
    }
    return build;
  }

  private async summary(templateId: string): Promise<TemplateSummary> {
    const dir = join(this.root, templateId);
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    const buildIds = entries.filter((e) => e.isDirectory() && NAME.test(e.name)).map((e) => e.name).sort();
    const current = await readlink(join(dir, 'current')).catch(() => undefined);
    return { templateId, currentBuildId: current && buildIds.includes(current) ? current : undefined, buildIds };
  }
}

/** The built-template fields of a manifest, kept only when they have the right type. */
function optionalStrings(manifest: TemplateManifest): Pick<TemplateBuild, 'startCmd' | 'readyCmd' | 'envs' | 'workdir' | 'user'> {
  const picked: Pick<TemplateBuild, 'startCmd' | 'readyCmd' | 'envs' | 'workdir' | 'user'> = {};
  for (const field of ['startCmd', 'readyCmd', 'workdir', 'user'] as const) {
    const value = manifest[field];
    if (typeof value === 'string' && value !== '') picked[field] = value;
  }
  const envs = manifest.envs;
  if (envs && typeof envs === 'object' && !Array.isArray(envs) && Object.values(envs).every((v) => typeof v === 'string')) picked.envs = { ...envs };
  return picked;
}

function assertName(what: string, value: string): void {
  if (typeof value !== 'string' || !NAME.test(value)) {
    throw new InvalidTemplateIdError(`${what} ${JSON.stringify(value)} must match ${NAME.source}`);
  }
}

function plainFile(name: string, what: string, dir: string): string {
  if (typeof name !== 'string' || !NAME.test(name)) throw new CorruptTemplateError(`${dir}: bad ${what} file name`);
  return name;
}
