import 'reflect-metadata';
import { createHash } from 'node:crypto';
import { relative } from 'node:path';
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
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IProbe } from 'kubernetes-models/v1/Probe';
import type { IService } from 'kubernetes-models/v1/Service';
import { declaredVariables, requiredVariables, resolveContainerEnv } from './container-env';
import { applyJsonPatch, renderKustomization } from './kustomize-render';
import {
  DEPLOY_ROOT,
  ManifestDocument,
  isKustomization,
  manifestFilesOf,
  parseManifestFile,
  readKustomization,
  yamlFilesUnder,
} from './manifest-tree';
import { ManifestView } from './manifest-view';
import { parseQuantity } from './resource-quantity';
import { unknownFields, validateAgainstSchema } from './schema-check';

type EnvClass = new () => object;

/** What an operator puts where the Secret says `change-me`: one generated value per placeholder, same across apps. */
const OPERATOR_SECRET = createHash('sha256').update('kiln deploy test: an operator-generated secret').digest('hex');
const replacePlaceholders = (value: string) => value.replace(/change-me[a-z-]*/g, (placeholder) => createHash('sha256').update(OPERATOR_SECRET + placeholder).digest('hex'));

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
  TLS_PORT: 'https',
};

/** Listeners an app opens only when its configuration turns them on. */
const PORT_ENABLED: Record<string, (config: Record<string, unknown>) => boolean> = {
  TLS_PORT: (config) => !!config.TLS_CERT_FILE,
};

const NAMESPACE = 'kiln';
const CLUSTER_SCOPED_KINDS = new Set(['Namespace']);
/** libs/telemetry's /health waits up to 2 s per dependency; a probe must outwait that. */
const HEALTH_REPORT_TIMEOUT_SECONDS = 2;

const files = yamlFilesUnder(DEPLOY_ROOT);
const documents = files.flatMap(parseManifestFile);
const manifestDocuments = documents.filter((d) => !isKustomization(d));
const kustomizationDocuments = documents.filter(isKustomization);

/** What `kubectl kustomize <dir>` would apply, for the base and every overlay. */
const variants = kustomizationDocuments.map((doc) => {
  const kustomization = readKustomization(doc);
  return { name: relative(DEPLOY_ROOT, kustomization.dir), view: new ManifestView(renderKustomization(kustomization, doc.object)) };
});

function describeDoc(doc: ManifestDocument): string {
  const meta = doc.object.metadata as { name?: string } | undefined;
  return `${doc.file}#${doc.index} ${String(doc.object.kind)}/${meta?.name ?? '?'}`;
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

describe('manifest files', () => {
  it('include a base kustomization and at least one manifest', () => {
    expect(kustomizationDocuments.map((d) => d.file)).toContain('base/kustomization.yaml');
    expect(manifestDocuments.length).toBeGreaterThan(0);
  });

  it.each(manifestDocuments.map((d) => [describeDoc(d), d] as const))(
    '%s is valid against the Kubernetes schema and has no unknown fields',
    (_label, doc) => {
      expect(() => validateAgainstSchema(doc.object)).not.toThrow();
      expect(unknownFields(doc.object)).toEqual([]);
    },
  );

  it('the unknown-field check reports misspelt fields (guards the check itself)', () => {
    const gateway = manifestDocuments.find((d) => d.object.kind === 'Deployment' && (d.object.metadata as { name: string }).name === 'gateway');
    const copy = structuredClone(gateway!.object) as unknown as IDeployment;
    const container = copy.spec!.template.spec!.containers[0] as unknown as Record<string, unknown>;
    container.readinesProbe = container.readinessProbe;
    (container.ports as Array<Record<string, unknown>>)[0].nmae = 'http';
    const object = copy as unknown as Record<string, unknown>;
    expect(() => validateAgainstSchema(object)).not.toThrow();
    expect(unknownFields(object).sort()).toEqual([
      '.spec.template.spec.containers[0].ports[0].nmae',
      '.spec.template.spec.containers[0].readinesProbe',
    ]);
  });

  it('are each listed by a kustomization, and everything a kustomization lists exists', () => {
    const listedPerKustomization = kustomizationDocuments.map((doc) => manifestFilesOf(readKustomization(doc)));
    for (const listed of listedPerKustomization) expect(listed.filter((f, i) => listed.indexOf(f) !== i)).toEqual([]);
    const listed = new Set(listedPerKustomization.flat());
    const manifestFiles = files.filter((f) => !parseManifestFile(f).some(isKustomization));
    expect(manifestFiles.filter((f) => !listed.has(f)).map((f) => relative(DEPLOY_ROOT, f))).toEqual([]);
  });

  it('hold only Secret values marked as placeholders', () => {
    for (const doc of manifestDocuments.filter((d) => d.object.kind === 'Secret')) {
      const values = { ...(doc.object.stringData as object), ...(doc.object.data as object) };
      for (const [key, value] of Object.entries(values)) expect(`${key}: ${String(value)}`).toMatch(/change-me/);
    }
  });
});

describe('the test renderer of kustomizations', () => {
  it('applies JSON 6902 add, replace and remove, and rejects paths that do not exist', () => {
    const target: Record<string, unknown> = { data: { A: '1' }, list: ['x'] };
    applyJsonPatch(target, { op: 'replace', path: '/data/A', value: '2' });
    applyJsonPatch(target, { op: 'add', path: '/data/B', value: '3' });
    applyJsonPatch(target, { op: 'add', path: '/list/-', value: 'y' });
    applyJsonPatch(target, { op: 'remove', path: '/list/0' });
    expect(target).toEqual({ data: { A: '2', B: '3' }, list: ['y'] });
    expect(() => applyJsonPatch(target, { op: 'replace', path: '/data/C', value: '4' })).toThrow(/does not exist/);
    expect(() => applyJsonPatch(target, { op: 'remove', path: '/spec/template' })).toThrow(/does not exist/);
  });
});

describe.each(variants)('$name rendered', ({ view }) => {
  const workload = (app: string) => view.workload<IDeployment | IDaemonSet>(APPS[app].kind, app);
  const containerEnv = (app: string) => view.containerEnv(workload(app).container);
  /** As an operator deploys it: the Secret's placeholders replaced by real values (README "Secrets"). */
  const deployedEnv = (app: string) => view.containerEnvWithSecrets(workload(app).container, replacePlaceholders);
  const loadedConfig = (app: string) => loadConfig(APPS[app].env, deployedEnv(app)) as Record<string, unknown>;

  it.each(view.documents.map((d) => [describeDoc(d), d] as const))('%s is still valid against the schema', (_label, doc) => {
    expect(() => validateAgainstSchema(doc.object)).not.toThrow();
  });

  it('has unique names per kind', () => {
    const keys = view.documents.map((d) => `${String(d.object.kind)}/${(d.object.metadata as { name?: string }).name}`);
    expect(keys.filter((k, i) => keys.indexOf(k) !== i)).toEqual([]);
  });

  it(`puts every namespaced resource in the "${NAMESPACE}" namespace, which it defines`, () => {
    expect(view.ofKind<{ metadata: { name: string } }>('Namespace').map((n) => n.metadata.name)).toEqual([NAMESPACE]);
    const elsewhere = view.documents
      .filter((d) => !CLUSTER_SCOPED_KINDS.has(String(d.object.kind)))
      .filter((d) => (d.object.metadata as { namespace?: string }).namespace !== NAMESPACE)
      .map(describeDoc);
    expect(elsewhere).toEqual([]);
  });

  it('labels every resource and pod with app.kubernetes.io/name and part-of: kiln', () => {
    const labelSets = [
      ...view.documents.map((d) => [describeDoc(d), (d.object.metadata as { labels?: Record<string, string> }).labels] as const),
      ...APP_NAMES.map((app) => [`${app} pod template`, workload(app).template.metadata?.labels] as const),
    ];
    const unlabelled = labelSets
      .filter(([, labels]) => !labels?.['app.kubernetes.io/name'] || labels['app.kubernetes.io/part-of'] !== 'kiln')
      .map(([where]) => where);
    expect(unlabelled).toEqual([]);
  });

  describe.each(APP_NAMES)('%s', (app) => {
    const envClass = APPS[app].env;

    it(`runs as a ${APPS[app].kind} of one container, image kiln/${app}:dev, selecting its own pods`, () => {
      const { object, template, container } = workload(app);
      expect(container.image).toBe(`kiln/${app}:dev`);
      expect(template.metadata?.labels?.['app.kubernetes.io/name']).toBe(app);
      expect(labelsMatch(object.spec?.selector.matchLabels, template.metadata?.labels)).toBe(true);
    });

    it('refuses to start on the Secret as shipped, naming every placeholder secret it reads (production)', () => {
      const shipped = containerEnv(app);
      expect(shipped.NODE_ENV).toBe('production');
      const secrets = view.secretVariables(workload(app).container);
      expect(secrets.length).toBeGreaterThan(0);
      const problems = (env: Record<string, string>) => {
        try {
          loadConfig(envClass, env);
          return '';
        } catch (error) {
          return (error as Error).message;
        }
      };
      const refused = problems(shipped);
      for (const name of secrets) expect(refused).toMatch(new RegExp(`${name} (is a placeholder|has a password that is a placeholder)`));
      // Control: with the placeholders replaced, none of them is refused (the next test loads the whole config).
      const replaced = problems(deployedEnv(app));
      for (const name of secrets) expect(replaced).not.toMatch(new RegExp(`\\b${name} `));
    });

    it(`gets only variables ${envClass.name} declares, every required one, with values it accepts`, () => {
      const declared = declaredVariables(envClass);
      const given = Object.keys(containerEnv(app));
      expect(given.filter((name) => !declared.has(name))).toEqual([]);
      expect([...requiredVariables(envClass)].filter((name) => !given.includes(name))).toEqual([]);
      expect(() => loadedConfig(app)).not.toThrow();
    });

    it('listens on the ports its container declares, and only those', () => {
      const config = loadedConfig(app);
      const expected = Object.entries(PORT_NAMES)
        .filter(([variable]) => declaredVariables(envClass).has(variable))
        .filter(([variable]) => PORT_ENABLED[variable]?.(config) ?? true)
        .map(([variable, name]) => ({ name, containerPort: Number(config[variable]) }));
      const declared = (workload(app).container.ports ?? []).map((p) => ({ name: p.name, containerPort: p.containerPort }));
      const byPort = (a: { containerPort: number }, b: { containerPort: number }) => a.containerPort - b.containerPort;
      expect(declared.sort(byPort)).toEqual(expected.sort(byPort));
    });

    it('probes GET /health on its HTTP port, with a timeout longer than the health report takes', () => {
      const { container } = workload(app);
      const httpPort = loadedConfig(app).HTTP_PORT;
      const probes = probesOf(container);
      expect(probes.map(([kind]) => kind)).toContain('readinessProbe');
      for (const [kind, probe] of probes) {
        const target = { kind, path: probe.httpGet?.path, port: containerPortNumber(container, probe.httpGet?.port) };
        expect(target).toEqual({ kind, path: '/health', port: httpPort });
        expect(probe.timeoutSeconds ?? 1).toBeGreaterThan(HEALTH_REPORT_TIMEOUT_SECONDS);
      }
    });

    it('asks Prometheus to scrape GET /metrics on its HTTP port', () => {
      expect(workload(app).template.metadata?.annotations ?? {}).toMatchObject({
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
      expect(livenessProbe).toBeDefined();
      expect((livenessProbe?.periodSeconds ?? 10) * (livenessProbe?.failureThreshold ?? 3)).toBeGreaterThanOrEqual(120);
    });

    it('runs as non-root with a read-only root filesystem, no extra privileges, and CPU/memory limits', () => {
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
      const service = view.named<IService>('Service', app);
      for (const other of APP_NAMES.filter((a) => a !== app)) {
        expect(labelsMatch(service.spec?.selector, workload(other).template.metadata?.labels)).toBe(false);
      }
      expect(labelsMatch(service.spec?.selector, template.metadata?.labels)).toBe(true);
      const ports = service.spec?.ports ?? [];
      expect(ports.length).toBeGreaterThan(0);
      for (const port of ports) expect(containerPortNumber(container, port.targetPort ?? port.port)).toBe(port.port);
    });
  });

  describe.each(['scheduler', 'gateway', 'host-agent', 'template-builder'])('%s internal mTLS', (app) => {
    it('reads the internal CA, its certificate and key from a Secret of its own, mounted read-only and readable by its group only', () => {
      const { template, container } = workload(app);
      const config = loadedConfig(app);
      for (const variable of ['KILN_INTERNAL_CA_FILE', 'KILN_INTERNAL_CERT_FILE', 'KILN_INTERNAL_KEY_FILE']) {
        const file = String(config[variable]);
        const mount = container.volumeMounts?.find((m) => file.startsWith(`${m.mountPath}/`));
        const volume = template.spec?.volumes?.find((v) => v.name === mount?.name);
        expect({ variable, readOnly: mount?.readOnly, secret: volume?.secret?.secretName, mode: volume?.secret?.defaultMode }).toEqual({
          variable,
          readOnly: true,
          secret: `${app}-internal-tls`,
          mode: 0o440,
        });
        // A cert-manager Certificate's Secret holds exactly these keys.
        expect(['ca.crt', 'tls.crt', 'tls.key']).toContain(file.slice((mount?.mountPath.length ?? 0) + 1));
      }
      const pod = template.spec?.securityContext;
      // Group-readable files: a non-root app reads them through fsGroup (the host agent runs as root).
      if (pod?.runAsUser !== undefined && pod.runAsUser !== 0) expect(pod.fsGroup).toBe(pod.runAsGroup);
    });
  });

  describe('gateway Deployment', () => {
    it('reads its TLS certificate and key from the operator\'s Secret, mounted read-only and readable by its group only', () => {
      const { template, container } = workload('gateway');
      const config = loadedConfig('gateway');
      const files = [String(config.TLS_CERT_FILE), String(config.TLS_KEY_FILE)];
      for (const file of files) {
        const mount = container.volumeMounts?.find((m) => file.startsWith(`${m.mountPath}/`));
        const volume = template.spec?.volumes?.find((v) => v.name === mount?.name);
        const key = file.slice((mount?.mountPath.length ?? 0) + 1);
        expect({ file, readOnly: mount?.readOnly, secret: volume?.secret?.secretName, mode: volume?.secret?.defaultMode }).toEqual({
          file,
          readOnly: true,
          secret: 'gateway-tls',
          mode: 0o440,
        });
        // A kubernetes.io/tls Secret (`kubectl create secret tls`) holds exactly these keys.
        expect(['tls.crt', 'tls.key']).toContain(key);
      }
      expect(template.spec?.securityContext?.fsGroup).toBe(template.spec?.securityContext?.runAsUser);
    });

    it('may bind its TLS port as a non-root user (SDKs call 443), and only from that port up', () => {
      const sysctls = workload('gateway').template.spec?.securityContext?.sysctls ?? [];
      const start = Number(sysctls.find((s) => s.name === 'net.ipv4.ip_unprivileged_port_start')?.value);
      expect(start).toBe(Number(loadedConfig('gateway').TLS_PORT));
    });
  });

  describe('host-agent DaemonSet', () => {
    const hostAgent = () => workload('host-agent');

    it('runs privileged in the node network namespace and still resolves cluster DNS names', () => {
      const { template, container } = hostAgent();
      expect(template.spec?.hostNetwork).toBe(true);
      expect(template.spec?.dnsPolicy).toBe('ClusterFirstWithHostNet');
      expect(container.securityContext?.privileged).toBe(true);
    });

    it('mounts /dev/kvm, /dev/net/tun, /run/netns (bidirectional) and its data dir from the host', () => {
      const { template, container } = hostAgent();
      const hostPathOf = (mountPath: string) => {
        const mount = container.volumeMounts?.find((m) => m.mountPath === mountPath);
        const volume = template.spec?.volumes?.find((v) => v.name === mount?.name);
        return { hostPath: volume?.hostPath?.path, propagation: mount?.mountPropagation };
      };
      expect(hostPathOf('/dev/kvm')).toEqual({ hostPath: '/dev/kvm', propagation: undefined });
      expect(hostPathOf('/dev/net/tun')).toEqual({ hostPath: '/dev/net/tun', propagation: undefined });
      expect(hostPathOf('/run/netns')).toEqual({ hostPath: '/run/netns', propagation: 'Bidirectional' });
      expect(hostPathOf(String(loadedConfig('host-agent').KILN_DATA_DIR)).hostPath).toBe('/var/lib/kiln');
    });

    it('takes its host id and address from the downward API', () => {
      const fieldOf = (name: string) => hostAgent().container.env?.find((e) => e.name === name)?.valueFrom?.fieldRef?.fieldPath;
      expect(fieldOf('KILN_HOST_ID')).toBe('spec.nodeName');
      expect(fieldOf('KILN_HOST_ADDRESS')).toBe('status.hostIP');
    });

    it('is never restarted, replaced or OOM-killed by Kubernetes on its own, since that kills every VM on the node', () => {
      const { object, container } = hostAgent();
      expect(container.livenessProbe).toBeUndefined();
      expect(container.startupProbe).toBeUndefined();
      expect((object as IDaemonSet).spec?.updateStrategy?.type).toBe('OnDelete');
      expect(container.resources?.limits?.memory).toBeUndefined();
    });
  });

  describe('template-builder Deployment', () => {
    it("reads the host's template store read-only, at the host's path, on the nodes host agents run on", () => {
      const { template, container } = workload('template-builder');
      const hostAgent = workload('host-agent');
      const dataDirVolume = hostAgent.template.spec?.volumes?.find(
        (v) => v.name === hostAgent.container.volumeMounts?.find((m) => m.mountPath === loadedConfig('host-agent').KILN_DATA_DIR)?.name,
      );
      const templatesDir = `${dataDirVolume?.hostPath?.path}/templates`;
      const mount = container.volumeMounts?.find((m) => m.mountPath === templatesDir);
      const volume = template.spec?.volumes?.find((v) => v.name === mount?.name);
      expect({ hostPath: volume?.hostPath?.path, readOnly: mount?.readOnly }).toEqual({ hostPath: templatesDir, readOnly: true });
      expect(template.spec?.nodeSelector).toEqual(hostAgent.template.spec?.nodeSelector);
      expect(template.spec?.tolerations).toEqual(hostAgent.template.spec?.tolerations);
    });
  });

  describe('host-monitor Deployment', () => {
    it('runs exactly one replica, replaced with Recreate so two monitors never run side by side', () => {
      const { object } = workload('host-monitor');
      expect((object as IDeployment).spec?.replicas).toBe(1);
      expect((object as IDeployment).spec?.strategy?.type).toBe('Recreate');
    });
  });

  describe('cross-app settings', () => {
    it('only the host monitor sets host liveness timing, and it declares a silent host dead within 15 s', () => {
      const monitor = loadedConfig('host-monitor');
      const [interval, unhealthy, dead] = ['HOST_HEARTBEAT_INTERVAL_SECONDS', 'HOST_UNHEALTHY_AFTER_SECONDS', 'HOST_DEAD_AFTER_SECONDS'].map((name) => Number(monitor[name]));
      expect(interval).toBeLessThan(unhealthy);
      expect(unhealthy).toBeLessThan(dead);
      expect(dead).toBeLessThanOrEqual(15);
      const timing = /^(HOST_HEARTBEAT_|HOST_UNHEALTHY_|HOST_DEAD_|HEARTBEAT_INTERVAL)/;
      for (const app of APP_NAMES.filter((a) => a !== 'host-monitor')) {
        expect([app, Object.keys(containerEnv(app)).filter((name) => timing.test(name))]).toEqual([app, []]);
      }
    });

    it('hosts join with a one-time token the host monitor alone signs, never a shared registration secret', () => {
      expect(view.secretVariables(workload('host-monitor').container)).toContain('HOST_JOIN_TOKEN_KEY');
      for (const app of APP_NAMES) {
        const names = Object.keys(containerEnv(app));
        expect([app, names.includes('HOST_REGISTRATION_TOKEN')]).toEqual([app, false]);
        if (app !== 'host-monitor') expect([app, names.includes('HOST_JOIN_TOKEN_KEY')]).toEqual([app, false]);
      }
      // The join token is a per-node Secret the operator creates while a node joins (README): not shipped, so unset.
      const joinToken = workload('host-agent').container.env?.find((e) => e.name === 'KILN_JOIN_TOKEN')?.valueFrom?.secretKeyRef;
      expect(joinToken).toEqual({ name: 'host-agent-join-token', key: 'KILN_JOIN_TOKEN', optional: true });
      expect(view.ofKind<{ metadata: { name: string } }>('Secret').map((secret) => secret.metadata.name)).not.toContain('host-agent-join-token');
      expect(loadedConfig('host-agent').KILN_JOIN_TOKEN).toBeUndefined();
      expect(String(loadedConfig('host-agent').KILN_HOST_STATE_KEY)).toHaveLength(64);
    });

    it("gives the gateway the admin API's token from kiln-secrets, and without the key the gateway starts with the admin API off", () => {
      expect(view.secretVariables(workload('gateway').container)).toContain('KILN_ADMIN_TOKEN');
      expect(String(loadedConfig('gateway').KILN_ADMIN_TOKEN)).toHaveLength(64);
      const withoutKey = new Map(view.sources.secrets);
      const { KILN_ADMIN_TOKEN: _removed, ...rest } = withoutKey.get('kiln-secrets') ?? {};
      withoutKey.set('kiln-secrets', rest);
      const env = resolveContainerEnv(workload('gateway').container, { configMaps: view.sources.configMaps, secrets: withoutKey });
      const deployed = Object.fromEntries([...env].map(([name, { value, source }]) => [name, source.startsWith('Secret ') ? replacePlaceholders(value) : value]));
      expect(deployed.KILN_ADMIN_TOKEN).toBeUndefined();
      expect((loadConfig(GatewayEnv, deployed) as GatewayEnv).KILN_ADMIN_TOKEN).toBeUndefined();
    });

    it('the control-plane apps share one database', () => {
      expect(new Set(DEPLOYMENT_APPS.map((app) => loadedConfig(app).DATABASE_URL)).size).toBe(1);
    });

    it('no PodDisruptionBudget blocks a single-replica deployment, and each selects one Deployment', () => {
      for (const pdb of view.ofKind<IPodDisruptionBudget>('PodDisruptionBudget')) {
        expect(pdb.spec?.minAvailable).toBeUndefined();
        const selected = DEPLOYMENT_APPS.filter((app) => labelsMatch(pdb.spec?.selector?.matchLabels, workload(app).template.metadata?.labels));
        expect(selected).toEqual([pdb.metadata?.name]);
      }
    });
  });
});
