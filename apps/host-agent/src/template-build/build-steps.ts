import { createHash } from 'node:crypto';
import type { BuildStep } from '@kiln/proto/hostagent';
import { InvalidBuildRequestError } from './template-build.errors';

/** What a step runs with and what the template's sandboxes start with: E2B's ENV, WORKDIR and USER so far. */
export interface BuildContext {
  envs: Record<string, string>;
  /** Absolute; undefined: the user's home. */
  workdir?: string;
  user: string;
}

export type ParsedStep =
  | { type: 'RUN'; command: string; user?: string }
  | { type: 'COPY'; src: string; dest: string; user?: string; mode?: string; filesHash: string; filesPath: string; filesSha256: string }
  | { type: 'ENV'; envs: Record<string, string> }
  | { type: 'WORKDIR'; path: string }
  | { type: 'USER'; user: string };

/** Steps that change the filesystem run in a build VM and leave a layer; the others change only the context. */
export function needsFilesystem(step: ParsedStep): step is Extract<ParsedStep, { type: 'RUN' | 'COPY' }> {
  return step.type === 'RUN' || step.type === 'COPY';
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const USER_NAME = /^[a-z_][a-z0-9_-]{0,31}\$?$|^[0-9]{1,10}$/;
const SHA256 = /^[0-9a-f]{64}$/;

/** Checks one request step (1-based `index` for messages) and gives it its typed shape. */
export function parseStep(step: BuildStep, index: number): ParsedStep {
  const args = step.args ?? [];
  const where = `step ${index} (${step.type || 'no type'})`;
  const bad = (why: string) => new InvalidBuildRequestError(`${where}: ${why}`);
  const optionalUser = (value: string | undefined) => {
    if (value === undefined || value === '') return undefined;
    if (!USER_NAME.test(value)) throw bad(`invalid user name ${JSON.stringify(value)}`);
    return value;
  };
  switch (step.type) {
    case 'RUN': {
      if (args.length < 1 || args.length > 2 || !args[0]?.trim()) throw bad('expects [command, user?]');
      return { type: 'RUN', command: args[0], user: optionalUser(args[1]) };
    }
    case 'COPY': {
      if (args.length < 2 || args.length > 4) throw bad('expects [src, dest, user?, mode?]');
      const [src, dest] = args;
      if (!src || src.startsWith('/') || src.split('/').includes('..') || src.includes('\0')) {
        throw bad(`source ${JSON.stringify(src)} must be a path inside the build context`);
      }
      if (!dest || dest.includes('\0')) throw bad('destination is required');
      const mode = args[3] ? args[3] : undefined;
      if (mode !== undefined && !/^0?[0-7]{3,4}$/.test(mode)) throw bad(`mode ${JSON.stringify(mode)} must be octal (e.g. 0755)`);
      if (!step.filesPath) throw bad('files_path (the uploaded archive) is required');
      if (!SHA256.test(step.filesSha256 ?? '')) throw bad('files_sha256 must be the archive sha256 (64 hex digits)');
      return {
        type: 'COPY',
        src,
        dest,
        user: optionalUser(args[2]),
        mode,
        filesHash: step.filesHash ?? '',
        filesPath: step.filesPath,
        filesSha256: step.filesSha256,
      };
    }
    case 'ENV': {
      if (args.length === 0 || args.length % 2 !== 0) throw bad('expects [name, value, name, value, ...]');
      const envs: Record<string, string> = {};
      for (let i = 0; i < args.length; i += 2) {
        if (!ENV_NAME.test(args[i])) throw bad(`invalid variable name ${JSON.stringify(args[i])}`);
        if (args[i + 1].includes('\0')) throw bad(`value of ${args[i]} contains a NUL byte`);
        envs[args[i]] = args[i + 1];
      }
      return { type: 'ENV', envs };
    }
    case 'WORKDIR': {
      const path = args[0];
      if (args.length !== 1 || !path || path.includes('\0')) throw bad('expects [path]');
      return { type: 'WORKDIR', path };
    }
    case 'USER': {
      if (args.length !== 1 || !USER_NAME.test(args[0] ?? '')) throw bad('expects [user name]');
      return { type: 'USER', user: args[0] };
    }
    default:
      throw bad('unknown step type (RUN, COPY, ENV, WORKDIR and USER are supported)');
  }
}

/** The context after a metadata step (a filesystem step leaves it unchanged). */
export function applyToContext(context: BuildContext, step: ParsedStep): BuildContext {
  switch (step.type) {
    case 'ENV':
      return { ...context, envs: { ...context.envs, ...step.envs } };
    case 'WORKDIR':
      // Relative to the current workdir (Docker's WORKDIR), normalised.
      return { ...context, workdir: normaliseAbsolute(step.path, context.workdir ?? '/') };
    case 'USER':
      return { ...context, user: step.user };
    default:
      return context;
  }
}

/** `path` made absolute against `base` with `.` and `..` resolved (never above `/`). */
export function normaliseAbsolute(path: string, base: string): string {
  const parts: string[] = [];
  for (const part of (path.startsWith('/') ? path : `${base}/${path}`).split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') parts.pop();
    else parts.push(part);
  }
  return `/${parts.join('/')}`;
}

/** Bumped whenever what a step does in the VM changes (so old layers are not reused for the new behaviour). */
const LAYER_FORMAT = 1;

/**
 * The cache key of a step's filesystem result: sha256 over the parent layer's key, the step (type, arguments, the
 * sha256 of its files) and the context it runs with (a RUN sees the ENVs, WORKDIR and USER; a COPY's relative
 * destination and the workdir it creates depend on them too). Keys of metadata steps only carry the context forward:
 * they are the parent's key (no layer of their own).
 */
export function layerKey(parentKey: string, step: Extract<ParsedStep, { type: 'RUN' | 'COPY' }>, context: BuildContext): string {
  const stepPart =
    step.type === 'RUN'
      ? { type: 'RUN', command: step.command, user: step.user ?? null }
      : { type: 'COPY', src: step.src, dest: step.dest, user: step.user ?? null, mode: step.mode ?? null, files: step.filesSha256 };
  const envs = Object.keys(context.envs)
    .sort()
    .map((name) => [name, context.envs[name]]);
  return createHash('sha256')
    .update(JSON.stringify({ format: LAYER_FORMAT, parent: parentKey, step: stepPart, context: { envs, workdir: context.workdir ?? null, user: context.user } }))
    .digest('hex');
}

/**
 * The key of a step rebuilt on purpose (skipCache / force): a fresh layer of this build's own. It never replaces the
 * cached layer under the plain key, whose cached children back onto it by path (rewriting it would change their
 * base under them); later builds without force may still reuse the earlier cache.
 */
export function forcedLayerKey(plainKey: string, buildId: string): string {
  return createHash('sha256').update(JSON.stringify({ format: LAYER_FORMAT, forced: plainKey, build: buildId })).digest('hex');
}

/** The key of a base: a template build (immutable once built) or an image's prepared layer. */
export function baseKey(base: { template: { templateId: string; buildId: string } } | { imageKey: string }): string {
  const identity = 'template' in base ? `template:${base.template.templateId}/${base.template.buildId}` : `image:${base.imageKey}`;
  return createHash('sha256').update(identity).digest('hex');
}
