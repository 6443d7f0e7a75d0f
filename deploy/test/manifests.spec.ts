import 'reflect-metadata';
import { resolve } from 'node:path';
import {
  GatewayEnv,
  HostAgentEnv,
  HostMonitorEnv,
  SchedulerEnv,
  TemplateBuilderEnv,
  loadConfig,
} from '@kiln/config';
import type { IDaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IPodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import type { IConfigMap } from 'kubernetes-models/v1/ConfigMap';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IPodTemplateSpec } from 'kubernetes-models/v1/PodTemplateSpec';
import type { IProbe } from 'kubernetes-models/v1/Probe';
import type { ISecret } from 'kubernetes-models/v1/Secret';
import type { IService } from 'kubernetes-models/v1/Service';
import { parse as parseYaml } from 'yaml';
import { ConfigSources, declaredVariables, requiredVariables, resolveContainerEnv } from './container-env';
import {
  DEPLOY_ROOT,
  ManifestDocument,
  isKustomization,
  manifestFilesOf,
  parseManifestFile,
  readKustomization,
  yamlFilesUnder,
} from './manifest-tree';
import { parseQuantity } from './resource-quantity';
import { unknownFields, validateAgainstSchema } from './schema-check';

type EnvClass = new () => object;

/** Each app's workload kind and the env class its main.ts loads. */
const APPS: Record<string, { kind: 'Deployment' | 'DaemonSet'; env: EnvClass }> = {
  gateway: { kind: 'Deployment', env: GatewayEnv },
  scheduler: { kind: 'Deployment', env: SchedulerEnv },
  'template-builder': { kind: 'Deployment', env: TemplateBuilderEnv },
  'host-monitor': { kind: 'Deployment', env: HostMonitorEnv },
  'host-agent': { kind: 'DaemonSet', env: HostAgentEnv },
};
const APP_NAMES = Object.keys(APPS);
const DEPLOYMENT_APPS = APP_NAMES.filter((app) => APPS[app].kind === 'Deployment');

/** Port variables of the env classes and the container port name each must match. */
const PORT_NAMES: Record<string, string> = {
  HTTP_PORT: 'http',
  SANDBOX_PROXY_PORT: 'sandbox-proxy',
  GRPC_PORT: 'grpc',
  PROXY_PORT: 'proxy',
};

const NAMESPACE = 'kiln';
const CLUSTER_SCOPED_KINDS = new Set(['Namespace']);
/** libs/telemetry's /health waits up to 2 s per dependency; a probe must outwait that. */
const HEALTH_REPORT_TIMEOUT_SECONDS = 2;

const files = yamlFilesUnder(DEPLOY_ROOT);
const documents = files.flatMap(parseManifestFile);
const kustomizations = documents.filter(isKustomization).map(readKustomization);
const baseKustomization = kustomizations.find((k) => k.file === 'base/kustomization.yaml');
/** The manifests of the base, which is what every overlay builds on. */
const baseFiles = new Set(baseKustomization ? manifestFilesOf(baseKustomization) : []);
const resources = documents.filter((d) => !isKustomization(d) && baseFiles.has(resolve(DEPLOY_ROOT, d.file)));

function describeDoc(doc: ManifestDocument): string {
  const meta = doc.object.metadata as { name?: string } | undefined;
  return `${doc.file}#${doc.index} ${String(doc.object.kind)}/${meta?.name ?? '?'}`;
}

function ofKind<T>(kind: string): T[] {
  return resources.filter((d) => d.object.kind === kind).map((d) => d.object as T);
}

function named<T extends { metadata?: { name?: string } }>(kind: string, name: string): T {
  const found = ofKind<T>(kind).filter((o) => o.metadata?.name === name);
  if (found.length !== 1) throw new Error(`expected one ${kind} named ${name}, found ${found.length}`);
  return found[0];
}

const sources: ConfigSources = {
  configMaps: new Map(ofKind<IConfigMap>('ConfigMap').map((c) => [c.metadata?.name ?? '', c.data ?? {}])),
  secrets: new Map(
    ofKind<ISecret>('Secret').map((s) => [
      s.metadata?.name ?? '',
      {
        ...Object.fromEntries(Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')])),
        ...(s.stringData ?? {}),
      },
    ]),
  ),
};

function workload(app: string): { object: IDeployment | IDaemonSet; template: IPodTemplateSpec; container: IContainer } {
  const object = named<IDeployment | IDaemonSet>(APPS[app].kind, app);
  const template = object.spec?.template;
  const containers = template?.spec?.containers ?? [];
  if (!template || containers.length !== 1) throw new Error(`${app} must have exactly one container`);
  return { object, template, container: containers[0] };
}

function containerEnv(app: string): Record<string, string> {
  const env = resolveContainerEnv(workload(app).container, sources);
  return Object.fromEntries([...env].map(([name, { value }]) => [name, value]));
}

function loadedConfig(app: string): Record<string, unknown> {
  return loadConfig(APPS[app].env, containerEnv(app)) as Record<string, unknown>;
}

function containerPortNumber(container: IContainer, port: string | number | undefined): number | undefined {
  const ports = container.ports ?? [];
  const match = typeof port === 'number' ? ports.find((p) => p.containerPort === port) : ports.find((p) => p.name === port);
  return match?.containerPort;
}

function probesOf(container: IContainer): Array<[string, IProbe]> {
  const probes: Array<[string, IProbe | undefined]> = [
    ['startupProbe', container.startupProbe],
    ['readinessProbe', container.readinessProbe],
    ['livenessProbe', container.livenessProbe],
  ];
  return probes.filter((entry): entry is [string, IProbe] => entry[1] !== undefined);
}

function labelsMatch(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  return !!selector && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

function jsonPointerExists(object: unknown, pointer: string): boolean {
  let node: unknown = object;
  for (const token of pointer.split('/').slice(1).map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'))) {
    if (node === null || typeof node !== 'object' || !(token in node)) return false;
    node = (node as Record<string, unknown>)[token];
  }
  return true;
}

describe('deploy/ manifests', () => {
  it('finds the base kustomization and parses every YAML file under deploy/', () => {
    expect(baseKustomization).toBeDefined();
    expect(files.length).toBeGreaterThan(1);
    expect(resources.length).toBeGreaterThan(0);
  });

  it.each(documents.filter((d) => !isKustomization(d)).map((d) => [describeDoc(d), d] as const))(
    '%s is valid against the Kubernetes schema and has no unknown fields',
    (_label, doc) => {
      expect(() => validateAgainstSchema(doc.object)).not.toThrow();
      expect(unknownFields(doc.object)).toEqual([]);
    },
  );

  it('the unknown-field check reports misspelt fields (guards the check itself)', () => {
    const { object } = workload('gateway');
    const copy = structuredClone(object) as IDeployment;
    const container = copy.spec!.template.spec!.containers[0] as unknown as Record<string, unknown>;
    container.readinesProbe = container.readinessProbe;
    (container.ports as Array<Record<string, unknown>>)[0].nmae = 'http';
    expect(() => validateAgainstSchema(copy as unknown as Record<string, unknown>)).not.toThrow();
    expect(unknownFields(copy as unknown as Record<string, unknown>).sort()).toEqual([
      '.spec.template.spec.containers[0].ports[0].nmae',
      '.spec.template.spec.containers[0].readinesProbe',
    ]);
  });

  it('names are unique per kind', () => {
    const keys = resources.map((d) => `${String(d.object.kind)}/${(d.object.metadata as { name?: string }).name}`);
    expect(keys.filter((k, i) => keys.indexOf(k) !== i)).toEqual([]);
  });

  it(`puts every namespaced resource in the "${NAMESPACE}" namespace, which it defines`, () => {
    expect(ofKind<{ metadata: { name: string } }>('Namespace').map((n) => n.metadata.name)).toEqual([NAMESPACE]);
    const elsewhere = resources
      .filter((d) => !CLUSTER_SCOPED_KINDS.has(String(d.object.kind)))
      .filter((d) => (d.object.metadata as { namespace?: string }).namespace !== NAMESPACE)
      .map(describeDoc);
    expect(elsewhere).toEqual([]);
  });

  it('labels every resource and pod with app.kubernetes.io/name and part-of: kiln', () => {
    const labelSets = [
      ...resources.map((d) => [describeDoc(d), (d.object.metadata as { labels?: Record<string, string> }).labels] as const),
      ...APP_NAMES.map((app) => [`${app} pod template`, workload(app).template.metadata?.labels] as const),
    ];
    const unlabelled = labelSets
      .filter(([, labels]) => !labels?.['app.kubernetes.io/name'] || labels['app.kubernetes.io/part-of'] !== 'kiln')
      .map(([where]) => where);
    expect(unlabelled).toEqual([]);
  });

  it('holds placeholder secrets that are marked as such', () => {
    for (const [name, values] of sources.secrets) {
      for (const [key, value] of Object.entries(values)) expect(`${name}/${key}: ${value}`).toMatch(/change-me/);
    }
  });
});

describe('kustomizations', () => {
  it('list files that exist, and every manifest file under deploy/ is in the base exactly once', () => {
    const listed = baseKustomization ? manifestFilesOf(baseKustomization) : [];
    expect(listed.filter((f, i) => listed.indexOf(f) !== i)).toEqual([]);
    const manifestFiles = files.filter((f) => !parseManifestFile(f).some(isKustomization));
    expect([...listed].sort()).toEqual([...manifestFiles].sort());
    // Overlays only build on the base (or other kustomizations); resolving them throws on a missing entry.
    for (const k of kustomizations) expect(manifestFilesOf(k).every((f) => baseFiles.has(f))).toBe(true);
  });

  it('the base puts everything in the kiln namespace', () => {
    const doc = documents.find((d) => d.file === 'base/kustomization.yaml');
    expect(doc?.object.namespace).toBe(NAMESPACE);
  });

  it('overlay replicas and patches target resources the overlay includes, at paths that exist', () => {
    for (const k of kustomizations) {
      const included = manifestFilesOf(k).flatMap(parseManifestFile);
      const find = (kind: string | undefined, name: string | undefined) =>
        included.find((d) => d.object.kind === kind && (d.object.metadata as { name?: string }).name === name);
      for (const { name } of k.replicas) expect(find('Deployment', name)).toBeDefined();
      for (const patch of k.patches) {
        expect(patch.path).toBeUndefined(); // inline patches only, so every YAML file under deploy/ is a full manifest
        const target = find(patch.target?.kind, patch.target?.name);
        expect({ patch: patch.target, found: !!target }).toEqual({ patch: patch.target, found: true });
        const operations: unknown = parseYaml(patch.patch ?? '');
        if (!Array.isArray(operations)) continue; // strategic merge: only the target matters
        for (const op of operations as Array<{ op: string; path: string }>) {
          if (['replace', 'remove', 'test'].includes(op.op)) {
            expect({ op, exists: jsonPointerExists(target!.object, op.path) }).toEqual({ op, exists: true });
          }
        }
      }
    }
  });
});

describe.each(APP_NAMES)('%s', (app) => {
  const envClass = APPS[app].env;

  it(`runs as a ${APPS[app].kind} of one container, image kiln/${app}:dev, selecting its own pods`, () => {
    const { object, template, container } = workload(app);
    expect(container.image).toBe(`kiln/${app}:dev`);
    expect(template.metadata?.labels?.['app.kubernetes.io/name']).toBe(app);
    expect(labelsMatch(object.spec?.selector.matchLabels, template.metadata?.labels)).toBe(true);
  });

  it(`gets only variables ${envClass.name} declares, every required one, with values it accepts`, () => {
    const declared = declaredVariables(envClass);
    const given = Object.keys(containerEnv(app));
    expect(given.filter((name) => !declared.has(name))).toEqual([]);
    const required = [...requiredVariables(envClass)];
    expect(required.filter((name) => !given.includes(name))).toEqual([]);
    expect(() => loadedConfig(app)).not.toThrow();
  });

  it('listens on the ports its container declares, and only those', () => {
    const config = loadedConfig(app);
    const { container } = workload(app);
    const expected = Object.entries(PORT_NAMES)
      .filter(([variable]) => declaredVariables(envClass).has(variable))
      .map(([variable, name]) => ({ name, containerPort: config[variable] }));
    const declared = (container.ports ?? []).map((p) => ({ name: p.name, containerPort: p.containerPort }));
    expect(declared.sort((a, b) => a.containerPort - b.containerPort)).toEqual(
      expected.sort((a, b) => Number(a.containerPort) - Number(b.containerPort)),
    );
  });

  it('probes GET /health on its HTTP port, with a timeout longer than the health report takes', () => {
    const { container } = workload(app);
    const httpPort = loadedConfig(app).HTTP_PORT;
    const probes = probesOf(container);
    expect(probes.map(([kind]) => kind)).toContain('readinessProbe');
    for (const [kind, probe] of probes) {
      expect({ kind, path: probe.httpGet?.path, port: containerPortNumber(container, probe.httpGet?.port) }).toEqual({
        kind,
        path: '/health',
        port: httpPort,
      });
      expect(probe.timeoutSeconds ?? 1).toBeGreaterThan(HEALTH_REPORT_TIMEOUT_SECONDS);
    }
  });

  it('asks Prometheus to scrape GET /metrics on its HTTP port', () => {
    const annotations = workload(app).template.metadata?.annotations ?? {};
    expect(annotations).toMatchObject({
      'prometheus.io/scrape': 'true',
      'prometheus.io/port': String(loadedConfig(app).HTTP_PORT),
      'prometheus.io/path': '/metrics',
    });
  });

  it('requests CPU and memory, and any limit is at least the request', () => {
    const { requests = {}, limits = {} } = workload(app).container.resources ?? {};
    expect(Object.keys(requests).sort()).toEqual(['cpu', 'memory']);
    for (const [resource, limit] of Object.entries(limits)) {
      expect(parseQuantity(limit)).toBeGreaterThanOrEqual(parseQuantity(requests[resource]));
    }
  });
});

describe.each(DEPLOYMENT_APPS)('%s Deployment', (app) => {
  it('has startup and liveness probes too, the liveness one tolerating two minutes of 503s', () => {
    const { startupProbe, livenessProbe } = workload(app).container;
    expect(startupProbe).toBeDefined();
    expect((livenessProbe?.periodSeconds ?? 10) * (livenessProbe?.failureThreshold ?? 3)).toBeGreaterThanOrEqual(120);
  });

  it('runs as non-root with a read-only root filesystem, no extra privileges and memory/CPU limits', () => {
    const { template, container } = workload(app);
    expect(template.spec?.hostNetwork).toBeFalsy();
    expect(template.spec?.securityContext?.runAsNonRoot).toBe(true);
    expect(container.securityContext).toMatchObject({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
    });
    expect(container.securityContext?.privileged).toBeFalsy();
    expect(Object.keys(container.resources?.limits ?? {}).sort()).toEqual(['cpu', 'memory']);
  });

  it('has a Service selecting only its pods, whose target ports exist on the container', () => {
    const { template, container } = workload(app);
    const service = named<IService>('Service', app);
    for (const other of APP_NAMES.filter((a) => a !== app)) {
      expect(labelsMatch(service.spec?.selector, workload(other).template.metadata?.labels)).toBe(false);
    }
    expect(labelsMatch(service.spec?.selector, template.metadata?.labels)).toBe(true);
    const ports = service.spec?.ports ?? [];
    expect(ports.length).toBeGreaterThan(0);
    for (const port of ports) expect(containerPortNumber(container, port.targetPort ?? port.port)).toBe(port.port);
  });
});

describe('host-agent DaemonSet', () => {
  const { object, template, container } = workload('host-agent');
  const spec = template.spec!;

  it('runs privileged in the node network namespace and still resolves cluster DNS names', () => {
    expect(spec.hostNetwork).toBe(true);
    expect(spec.dnsPolicy).toBe('ClusterFirstWithHostNet');
    expect(container.securityContext?.privileged).toBe(true);
  });

  it('mounts /dev/kvm, /dev/net/tun, /run/netns (bidirectional) and its data dir from the host', () => {
    const hostPathOf = (mountPath: string) => {
      const mount = container.volumeMounts?.find((m) => m.mountPath === mountPath);
      const volume = spec.volumes?.find((v) => v.name === mount?.name);
      return { hostPath: volume?.hostPath?.path, propagation: mount?.mountPropagation };
    };
    expect(hostPathOf('/dev/kvm')).toEqual({ hostPath: '/dev/kvm', propagation: undefined });
    expect(hostPathOf('/dev/net/tun')).toEqual({ hostPath: '/dev/net/tun', propagation: undefined });
    expect(hostPathOf('/run/netns')).toEqual({ hostPath: '/run/netns', propagation: 'Bidirectional' });
    const dataDir = String(loadedConfig('host-agent').KILN_DATA_DIR);
    expect(hostPathOf(dataDir).hostPath).toBe('/var/lib/kiln');
  });

  it('takes its host id and address from the downward API', () => {
    const fieldOf = (name: string) => container.env?.find((e) => e.name === name)?.valueFrom?.fieldRef?.fieldPath;
    expect(fieldOf('KILN_HOST_ID')).toBe('spec.nodeName');
    expect(fieldOf('KILN_HOST_ADDRESS')).toBe('status.hostIP');
  });

  it('is never restarted or replaced by Kubernetes on its own, since that kills every VM on the node', () => {
    expect(container.livenessProbe).toBeUndefined();
    expect(container.startupProbe).toBeUndefined();
    expect((object as IDaemonSet).spec?.updateStrategy?.type).toBe('OnDelete');
    expect(container.resources?.limits?.memory).toBeUndefined();
  });
});

describe('cross-app settings', () => {
  it('host agents beat at least twice per heartbeat TTL of the scheduler and host-monitor', () => {
    const interval = Number(loadedConfig('host-agent').HEARTBEAT_INTERVAL_SECONDS);
    for (const app of ['scheduler', 'host-monitor']) {
      expect(Number(loadedConfig(app).HOST_HEARTBEAT_TTL_SECONDS)).toBeGreaterThanOrEqual(2 * interval);
    }
  });

  it('host agents present the registration token the scheduler expects', () => {
    expect(loadedConfig('host-agent').HOST_REGISTRATION_TOKEN).toBe(loadedConfig('scheduler').HOST_REGISTRATION_TOKEN);
  });

  it('the control-plane apps share one database', () => {
    const urls = new Set(DEPLOYMENT_APPS.map((app) => loadedConfig(app).DATABASE_URL));
    expect(urls.size).toBe(1);
  });

  it('no PodDisruptionBudget blocks a single-replica deployment, and each selects one Deployment', () => {
    for (const pdb of ofKind<IPodDisruptionBudget>('PodDisruptionBudget')) {
      expect(pdb.spec?.minAvailable).toBeUndefined();
      const selected = DEPLOYMENT_APPS.filter((app) => labelsMatch(pdb.spec?.selector?.matchLabels, workload(app).template.metadata?.labels));
      expect(selected).toEqual([pdb.metadata?.name]);
    }
  });
});
