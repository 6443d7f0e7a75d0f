import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';

interface ValidatingModel {
  validate(): void;
}
type ModelClass = (new (data: never) => ValidatingModel) & { prototype: ValidatingModel };

/** The kinds deploy/ may contain, keyed by `apiVersion/kind`. */
export const MODELS: Record<string, ModelClass> = {
  'v1/Namespace': Namespace,
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'apps/v1/DaemonSet': DaemonSet,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
};

export function modelFor(object: Record<string, unknown>): ModelClass | undefined {
  return MODELS[`${String(object.apiVersion)}/${String(object.kind)}`];
}

/** Validates against the Kubernetes OpenAPI schema; throws with every violation in the message. */
export function validateAgainstSchema(object: Record<string, unknown>): void {
  const Model = modelFor(object);
  if (!Model) throw new Error(`no schema for ${String(object.apiVersion)} ${String(object.kind)}`);
  new Model(object as never).validate();
}

interface ObjectRecord {
  path: string;
  keys: string[];
  read: Set<string>;
  enumerated: boolean;
}

function recording(value: unknown, path: string, records: ObjectRecord[]): unknown {
  if (Array.isArray(value)) return value.map((item, i) => recording(item, `${path}[${i}]`, records));
  if (value === null || typeof value !== 'object') return value;
  const record: ObjectRecord = { path, keys: Object.keys(value), read: new Set(), enumerated: false };
  records.push(record);
  const copy = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, recording(v, `${path}.${k}`, records)]));
  return new Proxy(copy, {
    get(target, key, receiver) {
      if (typeof key === 'string') record.read.add(key);
      return Reflect.get(target, key, receiver);
    },
    ownKeys(target) {
      record.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

/**
 * Fields the schema does not know (typos such as `readinesProbe`), which the schema
 * validation accepts silently but `kubectl apply` rejects (strict field validation).
 * The generated validator reads every property its schema declares and enumerates
 * only free-form maps (labels, data, resources), so a key it never touched is one
 * the schema does not have. Only meaningful on an object that passed validation.
 */
export function unknownFields(object: Record<string, unknown>): string[] {
  const Model = modelFor(object);
  if (!Model) throw new Error(`no schema for ${String(object.apiVersion)} ${String(object.kind)}`);
  const records: ObjectRecord[] = [];
  const probe = recording(object, '', records);
  try {
    Model.prototype.validate.call(probe);
  } catch {
    // Reported by validateAgainstSchema; an invalid object stops the walk early.
  }
  const unknown = records
    .filter((r) => !r.enumerated)
    .flatMap((r) => r.keys.filter((k) => !r.read.has(k)).map((k) => `${r.path}.${k}`));
  // Everything inside an unknown field is unread too; report the field only.
  return unknown.filter((path) => !unknown.some((outer) => path.startsWith(`${outer}.`) || path.startsWith(`${outer}[`)));
}
