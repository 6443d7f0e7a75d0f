import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';

/** One YAML document of a file under deploy/. */
export interface ManifestDocument {
  /** Path relative to the deploy/ directory, for messages. */
  file: string;
  index: number;
  object: Record<string, unknown>;
}

export interface Kustomization {
  file: string;
  dir: string;
  resources: string[];
  replicas: Array<{ name: string; count: number }>;
  patches: Array<{ target?: { kind?: string; name?: string }; patch?: string; path?: string }>;
}

export const DEPLOY_ROOT = resolve(__dirname, '..');
const YAML_FILE = /\.ya?ml$/;
/** Not Kubernetes manifests: prometheus/ holds Prometheus' own configuration (checked by monitoring.spec.ts). */
const SKIPPED_DIRS = new Set(['node_modules', 'dist', 'test', 'prometheus']);

export function yamlFilesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return SKIPPED_DIRS.has(entry.name) ? [] : yamlFilesUnder(path);
    return YAML_FILE.test(entry.name) ? [path] : [];
  });
}

/**
 * Parses with the YAML 1.1 schema because that is what kubectl and kustomize use:
 * an unquoted `yes`/`on` becomes a boolean there, and the schema check then rejects
 * it where Kubernetes wants a string.
 */
export function parseManifestFile(path: string): ManifestDocument[] {
  const file = relative(DEPLOY_ROOT, path);
  return parseAllDocuments(readFileSync(path, 'utf8'), { version: '1.1' }).flatMap((doc, index) => {
    if (doc.errors.length > 0) throw new Error(`${file} document ${index}: ${doc.errors.map((e) => e.message).join('; ')}`);
    const object: unknown = doc.toJS();
    if (object === null || object === undefined) return [];
    if (typeof object !== 'object' || Array.isArray(object)) throw new Error(`${file} document ${index} is not a mapping`);
    return [{ file, index, object: object as Record<string, unknown> }];
  });
}

export function isKustomization(doc: ManifestDocument): boolean {
  return doc.object.kind === 'Kustomization';
}

export function readKustomization(doc: ManifestDocument): Kustomization {
  const o = doc.object as {
    resources?: string[];
    replicas?: Kustomization['replicas'];
    patches?: Kustomization['patches'];
  };
  return {
    file: doc.file,
    dir: dirname(join(DEPLOY_ROOT, doc.file)),
    resources: o.resources ?? [],
    replicas: o.replicas ?? [],
    patches: o.patches ?? [],
  };
}

/** The kustomization file of a directory, if it has one (kustomize accepts these names). */
export function kustomizationFileIn(dir: string): string | undefined {
  return ['kustomization.yaml', 'kustomization.yml', 'Kustomization']
    .map((name) => join(dir, name))
    .find((path) => existsSync(path));
}

/** Absolute paths of the manifest files a kustomization includes, following nested kustomizations. */
export function manifestFilesOf(kustomization: Kustomization): string[] {
  return kustomization.resources.flatMap((entry) => {
    const path = resolve(kustomization.dir, entry);
    if (!existsSync(path)) throw new Error(`${kustomization.file} lists ${entry}, which does not exist`);
    if (!statSync(path).isDirectory()) return [path];
    const nested = kustomizationFileIn(path);
    if (!nested) throw new Error(`${kustomization.file} lists directory ${entry}, which has no kustomization`);
    const [doc] = parseManifestFile(nested);
    return manifestFilesOf(readKustomization(doc));
  });
}
