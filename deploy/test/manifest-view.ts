import type { IConfigMap } from 'kubernetes-models/v1/ConfigMap';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IPodTemplateSpec } from 'kubernetes-models/v1/PodTemplateSpec';
import type { ISecret } from 'kubernetes-models/v1/Secret';
import { ConfigSources, resolveContainerEnv } from './container-env';
import { ManifestDocument } from './manifest-tree';

interface Named {
  metadata?: { name?: string };
}

export interface Workload<T> {
  object: T;
  template: IPodTemplateSpec;
  container: IContainer;
}

/** Lookups over one rendered set of manifests (the base, or an overlay's output). */
export class ManifestView {
  readonly sources: ConfigSources;

  constructor(readonly documents: ManifestDocument[]) {
    this.sources = {
      configMaps: new Map(this.ofKind<IConfigMap>('ConfigMap').map((c) => [c.metadata?.name ?? '', c.data ?? {}])),
      secrets: new Map(
        this.ofKind<ISecret>('Secret').map((s) => [
          s.metadata?.name ?? '',
          {
            ...Object.fromEntries(Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')])),
            ...(s.stringData ?? {}),
          },
        ]),
      ),
    };
  }

  ofKind<T>(kind: string): T[] {
    return this.documents.filter((d) => d.object.kind === kind).map((d) => d.object as T);
  }

  named<T extends Named>(kind: string, name: string): T {
    const found = this.ofKind<T>(kind).filter((o) => o.metadata?.name === name);
    if (found.length !== 1) throw new Error(`expected one ${kind} named ${name}, found ${found.length}`);
    return found[0];
  }

  /** A Deployment or DaemonSet that must have exactly one container. */
  workload<T extends Named & { spec?: { template: IPodTemplateSpec } }>(kind: string, name: string): Workload<T> {
    const object = this.named<T>(kind, name);
    const template = object.spec?.template;
    const containers = template?.spec?.containers ?? [];
    if (!template || containers.length !== 1) throw new Error(`${kind} ${name} must have exactly one container`);
    return { object, template, container: containers[0] };
  }

  /**
   * The container's environment as an operator deploys it: every value that comes from a Secret passed through
   * `replace` (real secrets in place of the shipped placeholders).
   */
  containerEnvWithSecrets(container: IContainer, replace: (value: string) => string): Record<string, string> {
    const env = resolveContainerEnv(container, this.sources);
    return Object.fromEntries([...env].map(([name, { value, source }]) => [name, source.startsWith('Secret ') ? replace(value) : value]));
  }

  /** Names of the container's variables that come from a Secret. */
  secretVariables(container: IContainer): string[] {
    return [...resolveContainerEnv(container, this.sources)].filter(([, { source }]) => source.startsWith('Secret ')).map(([name]) => name);
  }

  /** The container's environment as plain name → value, the way the app sees process.env. */
  containerEnv(container: IContainer): Record<string, string> {
    const env = resolveContainerEnv(container, this.sources);
    return Object.fromEntries([...env].map(([name, { value }]) => [name, value]));
  }
}
