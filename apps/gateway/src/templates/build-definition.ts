import type { TemplateBuildDefinition, TemplateBuildStepDefinition, TemplateBuildStepType } from '@kiln/contracts';
import { InvalidBuildDefinitionError } from './templates.errors';

/** Step types Kiln's builder runs (E2B's InstructionType). */
export const SUPPORTED_STEP_TYPES: readonly TemplateBuildStepType[] = ['RUN', 'COPY', 'ENV', 'WORKDIR', 'USER'];

/** Bounds that keep a definition a sane size (it is stored in one row and sent to a host). */
const MAX_STEPS = 1000;
const MAX_ARG_CHARS = 64 * 1024;
const MAX_COMMAND_CHARS = 64 * 1024;

/** E2B's filesHash is a sha256 (hex); the store key `files/<team>/<hash>` needs a safe segment either way. */
export const FILES_HASH_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const USER_NAME = /^(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|\d{1,10})$/;
const OCTAL_MODE = /^0?[0-7]{3,4}$/;

// Docker's reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest]. The first component is a
// domain only when it looks like one (a dot, a port, or localhost); otherwise it is a (lower-case) path component.
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9a-fA-F:]+\\])(?::[0-9]{1,5})?$`);
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$/;

/** Whether `ref` is an image reference a registry client accepts (`debian:bookworm`, `127.0.0.1:5000/app:1`). */
export function isImageReference(ref: string): boolean {
  if (ref.length === 0 || ref.length > 512) return false;
  const at = ref.indexOf('@');
  if (at >= 0 && !DIGEST.test(ref.slice(at + 1))) return false;
  let name = at >= 0 ? ref.slice(0, at) : ref;
  const lastColon = name.lastIndexOf(':');
  if (lastColon > name.lastIndexOf('/')) {
    if (!TAG.test(name.slice(lastColon + 1))) return false;
    name = name.slice(0, lastColon);
  }
  if (name.length === 0 || name.length > 255) return false;
  const components = name.split('/');
  const first = components[0];
  if (components.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('['))) {
    if (!DOMAIN.test(first)) return false;
    components.shift();
  }
  return components.length > 0 && components.every((c) => PATH_COMPONENT.test(c));
}

/** A definition as the request gave it, checked for shape; references (files, base template) still to be resolved. */
export type ParsedBuildDefinition = Omit<TemplateBuildDefinition, 'baseTemplate'>;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function hasNul(value: string): boolean {
  return value.includes('\0');
}

/** An optional string field: undefined when absent or null (the SDK sends `startCmd: undefined`), else a string. */
function optionalString(body: Record<string, unknown>, field: string, maxChars: number): string | undefined {
  const value = body[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string') throw new InvalidBuildDefinitionError(`${field} must be a string`);
  if (value.length > maxChars) throw new InvalidBuildDefinitionError(`${field} is longer than ${maxChars} characters`);
  if (hasNul(value)) throw new InvalidBuildDefinitionError(`${field} must not contain NUL characters`);
  return value;
}

function optionalBoolean(value: unknown, field: string): boolean {
  if (value === undefined || value === null) return false;
  if (typeof value !== 'boolean') throw new InvalidBuildDefinitionError(`${field} must be a boolean`);
  return value;
}

/** `step 3 (COPY)`: how errors name a step, numbered as E2B's BuildStatusReason.step ("1".."N"). */
export function stepLabel(index: number, type: string): string {
  return `step ${index + 1} (${type})`;
}

function parseStep(raw: unknown, index: number): TemplateBuildStepDefinition {
  if (!isObject(raw)) throw new InvalidBuildDefinitionError(`step ${index + 1}: must be an object with a type and args`);
  const type = raw.type;
  if (typeof type !== 'string' || type.length === 0) throw new InvalidBuildDefinitionError(`step ${index + 1}: type must be a non-empty string`);
  const label = stepLabel(index, type.slice(0, 32));
  const fail = (message: string): never => {
    throw new InvalidBuildDefinitionError(`${label}: ${message}`);
  };
  if (!(SUPPORTED_STEP_TYPES as readonly string[]).includes(type)) {
    fail(`unknown step type; supported: ${SUPPORTED_STEP_TYPES.join(', ')}`);
  }
  const argsRaw = raw.args ?? [];
  if (!Array.isArray(argsRaw) || argsRaw.some((a) => typeof a !== 'string')) fail('args must be an array of strings');
  const args = argsRaw as string[];
  if (args.some((a) => a.length > MAX_ARG_CHARS)) fail(`an argument is longer than ${MAX_ARG_CHARS} characters`);
  if (args.some(hasNul)) fail('arguments must not contain NUL characters');
  const force = optionalBoolean(raw.force, `${label}: force`);
  const arity = (min: number, max: number, shape: string): void => {
    if (args.length < min || args.length > max) fail(`takes ${shape}, got ${args.length} argument${args.length === 1 ? '' : 's'}`);
  };
  const step: TemplateBuildStepDefinition = { type: type as TemplateBuildStepType, args, force };
  switch (type as TemplateBuildStepType) {
    case 'RUN':
      arity(1, 2, '[command, user?]');
      if (args[0].trim().length === 0) fail('the command is empty');
      if (args[1] !== undefined && args[1] !== '' && !USER_NAME.test(args[1])) fail(`'${args[1]}' is not a user name`);
      break;
    case 'COPY': {
      arity(2, 4, '[src, dest, user?, mode?]');
      const [src, dest, user = '', mode = ''] = args;
      if (src.length === 0 || dest.length === 0) fail('src and dest must not be empty');
      if (src.startsWith('/')) fail(`src '${src}' must be relative to the build context`);
      if (user !== '' && !USER_NAME.test(user)) fail(`'${user}' is not a user name`);
      if (mode !== '' && !OCTAL_MODE.test(mode)) fail(`mode '${mode}' is not an octal file mode (e.g. 0755)`);
      const filesHash = raw.filesHash;
      if (typeof filesHash !== 'string' || !FILES_HASH_PATTERN.test(filesHash)) fail('filesHash must be the hash of the uploaded files');
      step.filesHash = filesHash as string;
      break;
    }
    case 'ENV':
      if (args.length === 0 || args.length % 2 !== 0) fail(`takes [name, value, ...] pairs, got ${args.length} argument${args.length === 1 ? '' : 's'}`);
      for (let i = 0; i < args.length; i += 2) {
        if (!ENV_NAME.test(args[i])) fail(`'${args[i]}' is not an environment variable name`);
      }
      break;
    case 'WORKDIR':
      arity(1, 1, '[path]');
      if (args[0].length === 0) fail('the path is empty');
      break;
    case 'USER':
      arity(1, 1, '[user]');
      if (!USER_NAME.test(args[0])) fail(`'${args[0]}' is not a user name`);
      break;
  }
  return step;
}

/**
 * Checks E2B's TemplateBuildStartV2 for shape and normalises it: exactly one base (fromImage, a valid image
 * reference, or fromTemplate), registry credentials of type `registry` only, every step a supported type with the
 * right arguments. Errors name the step (`step 3 (COPY): ...`) or the field. Unknown fields are ignored: the SDK
 * sends its own bookkeeping (forceUpload, resolveSymlinks, gzip) with each step.
 */
export function parseBuildDefinition(body: unknown): ParsedBuildDefinition {
  if (!isObject(body)) throw new InvalidBuildDefinitionError('the body must be a JSON object (TemplateBuildStartV2)');
  const fromImage = optionalString(body, 'fromImage', 1024);
  const fromTemplate = optionalString(body, 'fromTemplate', 256);
  if (fromImage !== undefined && fromTemplate !== undefined) {
    throw new InvalidBuildDefinitionError('give either fromImage or fromTemplate, not both');
  }
  if (!fromImage && !fromTemplate) throw new InvalidBuildDefinitionError('give the base to build from: fromImage or fromTemplate');

  const definition: ParsedBuildDefinition = { force: optionalBoolean(body.force, 'force'), steps: [] };
  if (fromImage !== undefined) {
    if (!isImageReference(fromImage)) throw new InvalidBuildDefinitionError(`fromImage '${fromImage.slice(0, 200)}' is not a valid image reference`);
    definition.fromImage = fromImage;
    const registry = body.fromImageRegistry;
    if (registry !== undefined && registry !== null) {
      if (!isObject(registry)) throw new InvalidBuildDefinitionError('fromImageRegistry must be an object');
      if (registry.type === 'aws' || registry.type === 'gcp') {
        const which = registry.type === 'aws' ? 'AWS ECR' : 'GCP Artifact Registry';
        throw new InvalidBuildDefinitionError(`fromImageRegistry type '${registry.type}' (${which}) is not supported; use type 'registry' with a username and password`);
      }
      if (registry.type !== 'registry') throw new InvalidBuildDefinitionError("fromImageRegistry.type must be 'registry'");
      const username = optionalString(registry, 'username', 1024);
      const password = optionalString(registry, 'password', 8192);
      if (!username || password === undefined) throw new InvalidBuildDefinitionError("fromImageRegistry of type 'registry' needs a username and a password");
      definition.fromImageRegistry = { username, password };
    }
  } else {
    // A registry given with fromTemplate is the SDK's leftover of an earlier fromImage call: it has nothing to log in to.
    definition.fromTemplate = fromTemplate;
  }

  const steps = body.steps ?? [];
  if (!Array.isArray(steps)) throw new InvalidBuildDefinitionError('steps must be an array');
  if (steps.length > MAX_STEPS) throw new InvalidBuildDefinitionError(`a template has at most ${MAX_STEPS} steps, got ${steps.length}`);
  definition.steps = steps.map(parseStep);

  const startCmd = optionalString(body, 'startCmd', MAX_COMMAND_CHARS);
  const readyCmd = optionalString(body, 'readyCmd', MAX_COMMAND_CHARS);
  if (startCmd) definition.startCmd = startCmd;
  if (readyCmd) definition.readyCmd = readyCmd;
  return definition;
}
