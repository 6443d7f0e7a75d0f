import { ValidationTypes, getMetadataStorage } from 'class-validator';
import type { IContainer } from 'kubernetes-models/v1/Container';

/** Where a container's variable comes from, for messages. */
export interface EnvValue {
  value: string;
  source: string;
}

export interface ConfigSources {
  configMaps: Map<string, Record<string, string>>;
  secrets: Map<string, Record<string, string>>;
}

/**
 * Stand-ins for downward-API fields, which only exist on a scheduled pod. Shaped like
 * real values (a node name, a node IP) so the apps' validators judge them as they would.
 */
export const DOWNWARD_API_SAMPLES: Record<string, string> = {
  'spec.nodeName': 'sandbox-host-1',
  'status.hostIP': '192.0.2.10',
};

function lookup(
  kind: 'ConfigMap' | 'Secret',
  store: Map<string, Record<string, string>>,
  name: string | undefined,
  key?: string,
): Record<string, string> {
  const entries = name === undefined ? undefined : store.get(name);
  if (!entries) throw new Error(`${kind} "${name}" is not defined under deploy/`);
  if (key !== undefined && !(key in entries)) throw new Error(`${kind} "${name}" has no key ${key}`);
  return entries;
}

/**
 * The environment a container starts with, as the kubelet builds it: `envFrom`
 * sources in order, then `env` entries overriding them. Missing ConfigMaps, Secrets
 * or keys throw (the pod would not start), unless an `optional` Secret key reference
 * names them (the variable is then unset).
 */
export function resolveContainerEnv(container: IContainer, sources: ConfigSources): Map<string, EnvValue> {
  const env = new Map<string, EnvValue>();
  for (const from of container.envFrom ?? []) {
    if (from.prefix) throw new Error(`container ${container.name}: envFrom prefixes would rename variables`);
    if (from.configMapRef) {
      const name = from.configMapRef.name;
      for (const [k, v] of Object.entries(lookup('ConfigMap', sources.configMaps, name))) env.set(k, { value: v, source: `ConfigMap ${name}` });
    } else if (from.secretRef) {
      const name = from.secretRef.name;
      for (const [k, v] of Object.entries(lookup('Secret', sources.secrets, name))) env.set(k, { value: v, source: `Secret ${name}` });
    } else {
      throw new Error(`container ${container.name}: envFrom entry without a source`);
    }
  }
  for (const entry of container.env ?? []) {
    const ref = entry.valueFrom;
    if (!ref) {
      env.set(entry.name, { value: entry.value ?? '', source: 'literal' });
    } else if (ref.configMapKeyRef) {
      const { name, key } = ref.configMapKeyRef;
      env.set(entry.name, { value: lookup('ConfigMap', sources.configMaps, name, key)[key], source: `ConfigMap ${name}/${key}` });
    } else if (ref.secretKeyRef) {
      const { name, key, optional } = ref.secretKeyRef;
      // An optional reference to a Secret or key that does not exist leaves the variable unset, as the kubelet does.
      if (optional && (name === undefined || !(key in (sources.secrets.get(name) ?? {})))) continue;
      env.set(entry.name, { value: lookup('Secret', sources.secrets, name, key)[key], source: `Secret ${name}/${key}` });
    } else if (ref.fieldRef) {
      const sample = DOWNWARD_API_SAMPLES[ref.fieldRef.fieldPath];
      if (sample === undefined) throw new Error(`container ${container.name}: no sample for fieldRef ${ref.fieldRef.fieldPath}`);
      env.set(entry.name, { value: sample, source: `fieldRef ${ref.fieldRef.fieldPath}` });
    } else {
      throw new Error(`container ${container.name}: env ${entry.name} uses an unsupported valueFrom`);
    }
  }
  return env;
}

/**
 * Every variable an env class declares, including inherited ones and ones without
 * an initialiser (which `Object.keys(new Env())` would miss): each carries at least
 * one class-validator decorator, so the metadata storage knows them all.
 */
export function declaredVariables(envClass: new () => object): Set<string> {
  const metadata = getMetadataStorage().getTargetValidationMetadatas(envClass, '', true, false);
  return new Set(metadata.map((m) => m.propertyName));
}

/** Variables with neither a default value nor @IsOptional: the app refuses to start without them. */
export function requiredVariables(envClass: new () => object): Set<string> {
  const metadata = getMetadataStorage().getTargetValidationMetadatas(envClass, '', true, false);
  const optional = new Set(metadata.filter((m) => m.type === ValidationTypes.CONDITIONAL_VALIDATION).map((m) => m.propertyName));
  const defaults = new envClass() as Record<string, unknown>;
  return new Set([...declaredVariables(envClass)].filter((name) => defaults[name] === undefined && !optional.has(name)));
}
