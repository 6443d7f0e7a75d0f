import { existsSync, statSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { Kustomization, ManifestDocument, kustomizationFileIn, parseManifestFile, readKustomization } from './manifest-tree';

/**
 * The kustomization fields this renderer implements. Anything else makes it throw
 * rather than render something kustomize would not: extend it (or the test) when an
 * overlay needs more.
 */
const SUPPORTED_FIELDS = new Set(['apiVersion', 'kind', 'resources', 'namespace', 'replicas', 'patches']);
const SUPPORTED_TARGET_FIELDS = new Set(['kind', 'name']);
const CLUSTER_SCOPED_KINDS = new Set(['Namespace']);

interface PatchOperation {
  op: string;
  path: string;
  value?: unknown;
}

function nameOf(doc: ManifestDocument): string | undefined {
  return (doc.object.metadata as { name?: string } | undefined)?.name;
}

function pointerTokens(pointer: string): string[] {
  if (!pointer.startsWith('/')) throw new Error(`JSON pointer "${pointer}" must start with /`);
  return pointer.split('/').slice(1).map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/** RFC 6902 add/replace/remove/test, in place; a path that does not resolve throws, as in kustomize. */
export function applyJsonPatch(target: Record<string, unknown>, operation: PatchOperation): void {
  const tokens = pointerTokens(operation.path);
  const last = tokens.pop();
  if (last === undefined) throw new Error('patching the document root is not supported');
  let parent: unknown = target;
  for (const token of tokens) {
    if (parent === null || typeof parent !== 'object' || !(token in parent)) throw new Error(`path ${operation.path} does not exist`);
    parent = (parent as Record<string, unknown>)[token];
  }
  if (parent === null || typeof parent !== 'object') throw new Error(`path ${operation.path} does not exist`);
  if (Array.isArray(parent)) {
    const index = last === '-' && operation.op === 'add' ? parent.length : Number(last);
    const bound = operation.op === 'add' ? parent.length : parent.length - 1;
    if (!Number.isInteger(index) || index < 0 || index > bound) throw new Error(`path ${operation.path} does not exist`);
    if (operation.op === 'add') parent.splice(index, 0, operation.value);
    else if (operation.op === 'replace') parent[index] = operation.value;
    else if (operation.op === 'remove') parent.splice(index, 1);
    else if (operation.op === 'test') {
      if (!isDeepStrictEqual(parent[index], operation.value)) throw new Error(`test of ${operation.path} failed`);
    } else throw new Error(`JSON patch op "${operation.op}" is not supported`);
    return;
  }
  const object = parent as Record<string, unknown>;
  if (operation.op !== 'add' && !(last in object)) throw new Error(`path ${operation.path} does not exist`);
  if (operation.op === 'add' || operation.op === 'replace') object[last] = operation.value;
  else if (operation.op === 'remove') delete object[last];
  else if (operation.op === 'test') {
    if (!isDeepStrictEqual(object[last], operation.value)) throw new Error(`test of ${operation.path} failed`);
  } else throw new Error(`JSON patch op "${operation.op}" is not supported`);
}

/**
 * What `kubectl kustomize` outputs for a kustomization, for the subset of features
 * deploy/ uses: nested resources, namespace, replicas and inline JSON 6902 patches
 * targeted by kind and name. Runs without kubectl so the suite needs no cluster tools.
 */
export function renderKustomization(kustomization: Kustomization, raw: Record<string, unknown>): ManifestDocument[] {
  const unsupported = Object.keys(raw).filter((field) => !SUPPORTED_FIELDS.has(field));
  if (unsupported.length > 0) throw new Error(`${kustomization.file}: renderer does not support ${unsupported.join(', ')}`);

  const docs = kustomization.resources.flatMap((entry) => {
    const path = resolve(kustomization.dir, entry);
    if (!existsSync(path)) throw new Error(`${kustomization.file} lists ${entry}, which does not exist`);
    if (!statSync(path).isDirectory()) return parseManifestFile(path);
    const nestedFile = kustomizationFileIn(path);
    if (!nestedFile) throw new Error(`${kustomization.file}: ${entry} has no kustomization`);
    const [nested] = parseManifestFile(nestedFile);
    return renderKustomization(readKustomization(nested), nested.object);
  });
  const rendered = docs.map((doc) => ({ ...doc, object: structuredClone(doc.object) }));

  const namespace = raw.namespace as string | undefined;
  if (namespace !== undefined) {
    for (const doc of rendered) {
      if (CLUSTER_SCOPED_KINDS.has(String(doc.object.kind))) continue;
      doc.object.metadata = { ...(doc.object.metadata as object), namespace };
    }
  }

  for (const { name, count } of kustomization.replicas) {
    const targets = rendered.filter((d) => d.object.kind === 'Deployment' && nameOf(d) === name);
    if (targets.length !== 1) throw new Error(`${kustomization.file}: replicas names no single Deployment "${name}"`);
    (targets[0].object.spec as Record<string, unknown>).replicas = count;
  }

  for (const patch of kustomization.patches) {
    if (patch.path !== undefined || patch.patch === undefined) throw new Error(`${kustomization.file}: only inline patches are supported`);
    const selector = patch.target ?? {};
    const extra = Object.keys(selector).filter((field) => !SUPPORTED_TARGET_FIELDS.has(field));
    if (extra.length > 0 || !selector.kind || !selector.name) {
      throw new Error(`${kustomization.file}: patch targets must name exactly a kind and a name`);
    }
    const operations: unknown = parseYaml(patch.patch);
    if (!Array.isArray(operations)) throw new Error(`${kustomization.file}: only JSON 6902 patches are supported`);
    const targets = rendered.filter((d) => d.object.kind === selector.kind && nameOf(d) === selector.name);
    if (targets.length !== 1) throw new Error(`${kustomization.file}: patch target ${selector.kind}/${selector.name} matches ${targets.length} resources`);
    for (const operation of operations as PatchOperation[]) {
      try {
        applyJsonPatch(targets[0].object, operation);
      } catch (error) {
        throw new Error(`${kustomization.file}: patch of ${selector.kind}/${selector.name}: ${(error as Error).message}`);
      }
    }
  }
  return rendered;
}
