import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { parse } from 'yaml';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IPodTemplateSpec } from 'kubernetes-models/v1/PodTemplateSpec';
import { renderKustomization } from './kustomize-render';
import { DEPLOY_ROOT, isKustomization, parseManifestFile, readKustomization } from './manifest-tree';

/*
 * The monitoring files under deploy/: the Grafana dashboard (grafana/kiln-fleet.json) must only query metrics the
 * code registers, with their labels; the Prometheus job (prometheus/prometheus.yml) must find exactly one target per
 * Kiln pod, on the port and path its annotations announce; the dev stack's job must name the stack's ports.
 */

const REPO_ROOT = resolve(DEPLOY_ROOT, '..');

interface RegisteredMetric {
  type: 'counter' | 'gauge' | 'histogram';
  labels: string[];
  file: string;
}

function sourceFilesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return ['node_modules', 'dist', 'test'].includes(entry.name) ? [] : sourceFilesUnder(path);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.spec.ts') ? [path] : [];
  });
}

const SOURCE_FILES = ['apps', 'libs'].flatMap((top) =>
  readdirSync(join(REPO_ROOT, top), { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .flatMap((entry) => {
      try {
        return sourceFilesUnder(join(REPO_ROOT, top, entry.name, 'src'));
      } catch {
        return [];
      }
    }),
);
const SOURCES = SOURCE_FILES.map((file) => ({ file: relative(REPO_ROOT, file), text: readFileSync(file, 'utf8') }));

/** `metrics.counter('kiln_x', 'help', ['a', 'b'])` and the gauge/histogram forms, across lines; help in any quotes. */
const REGISTRATION = /\.(counter|gauge|histogram)(?:<[^>(]*>)?\(\s*'(kiln_[a-z0-9_]+)',\s*(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`)\s*(?:,\s*\[([^\]]*)\])?/g;

const REGISTERED = new Map<string, RegisteredMetric>();
for (const { file, text } of SOURCES) {
  for (const match of text.matchAll(REGISTRATION)) {
    const labels = [...(match[3] ?? '').matchAll(/'([a-z_]+)'/g)].map((m) => m[1]);
    REGISTERED.set(match[2], { type: match[1] as RegisteredMetric['type'], labels, file });
  }
}
/** Every string literal in the code, to check the label values a query matches on (`resource="memory_mib"`). */
const STRING_LITERALS = new Set(SOURCES.flatMap(({ text }) => [...text.matchAll(/'([^'\\\n]*)'/g)].map((m) => m[1])));

const HISTOGRAM_SERIES = /_(bucket|sum|count)$/;

/** The registered metric a series name belongs to (`x_bucket` of histogram `x`), or undefined. */
function metricOf(series: string): { name: string; metric: RegisteredMetric; bucket: boolean } | undefined {
  const direct = REGISTERED.get(series);
  if (direct) return { name: series, metric: direct, bucket: false };
  const base = series.replace(HISTOGRAM_SERIES, '');
  const histogram = REGISTERED.get(base);
  if (histogram?.type === 'histogram' && base !== series) return { name: base, metric: histogram, bucket: series.endsWith('_bucket') };
  return undefined;
}

// ---- Prometheus -------------------------------------------------------------------------------

interface RelabelRule {
  source_labels?: string[];
  separator?: string;
  regex?: string;
  target_label?: string;
  replacement?: string;
  action?: string;
}

interface ScrapeConfig {
  job_name: string;
  kubernetes_sd_configs?: Array<{ role: string; namespaces?: { names: string[] } }>;
  static_configs?: Array<{ targets: string[]; labels?: Record<string, string> }>;
  relabel_configs?: RelabelRule[];
  metrics_path?: string;
}

const prometheus = parse(readFileSync(join(DEPLOY_ROOT, 'prometheus', 'prometheus.yml'), 'utf8')) as { scrape_configs: ScrapeConfig[] };
const prometheusDev = parse(readFileSync(join(DEPLOY_ROOT, 'prometheus', 'prometheus-dev.yml'), 'utf8')) as { scrape_configs: ScrapeConfig[] };
const kilnJob = prometheus.scrape_configs.find((job) => job.job_name === 'kiln')!;

/** Prometheus' relabelling (anchored RE2 regexes; the ones here use nothing RE2 and JavaScript disagree on). */
function relabel(labels: Map<string, string>, rules: RelabelRule[]): Map<string, string> | undefined {
  for (const rule of rules) {
    const value = (rule.source_labels ?? []).map((name) => labels.get(name) ?? '').join(rule.separator ?? ';');
    const match = new RegExp(`^(?:${rule.regex ?? '(.*)'})$`).exec(value);
    const action = rule.action ?? 'replace';
    if (action === 'keep') {
      if (!match) return undefined;
    } else if (action === 'drop') {
      if (match) return undefined;
    } else if (action === 'replace') {
      if (!match) continue;
      const result = (rule.replacement ?? '$1').replace(/\$\{?(\d+)\}?/g, (_all, group: string) => match[Number(group)] ?? '');
      if (result === '') labels.delete(rule.target_label!);
      else labels.set(rule.target_label!, result);
    } else {
      throw new Error(`relabel action ${action} is not simulated here`);
    }
  }
  return labels;
}

const sanitise = (name: string) => name.replace(/[^a-zA-Z0-9_]/g, '_');

/** What Kubernetes pod discovery hands the relabelling: one candidate target per declared container port. */
function discoveredTargets(template: IPodTemplateSpec, podName: string): Array<Map<string, string>> {
  const meta = new Map<string, string>([
    ['__meta_kubernetes_namespace', 'kiln'],
    ['__meta_kubernetes_pod_name', podName],
    ['__meta_kubernetes_pod_ip', '10.1.0.7'],
    ['__meta_kubernetes_pod_node_name', 'sandbox-host-1'],
    ['__metrics_path__', kilnJob.metrics_path ?? '/metrics'],
    ['__scheme__', 'http'],
  ]);
  for (const [key, value] of Object.entries(template.metadata?.annotations ?? {})) meta.set(`__meta_kubernetes_pod_annotation_${sanitise(key)}`, value);
  for (const [key, value] of Object.entries(template.metadata?.labels ?? {})) meta.set(`__meta_kubernetes_pod_label_${sanitise(key)}`, value);
  const containers: IContainer[] = template.spec?.containers ?? [];
  return containers.flatMap((container) =>
    (container.ports ?? []).map(
      (port) =>
        new Map([
          ...meta,
          ['__address__', `10.1.0.7:${port.containerPort}`],
          ['__meta_kubernetes_pod_container_name', container.name],
          ['__meta_kubernetes_pod_container_port_number', String(port.containerPort)],
          ['__meta_kubernetes_pod_container_port_name', port.name ?? ''],
        ]),
    ),
  );
}

/** The targets Prometheus scrapes for a pod: relabelled, meta labels dropped, identical targets merged. */
function scrapedTargets(template: IPodTemplateSpec, podName: string): Array<Record<string, string>> {
  const targets = new Map<string, Record<string, string>>();
  for (const candidate of discoveredTargets(template, podName)) {
    const labels = relabel(candidate, kilnJob.relabel_configs ?? []);
    if (!labels) continue;
    const kept = Object.fromEntries([...labels].filter(([name]) => !name.startsWith('__meta_') && name !== '__scheme__'));
    targets.set(JSON.stringify(Object.entries(kept).sort()), kept);
  }
  return [...targets.values()];
}

const base = parseManifestFile(join(DEPLOY_ROOT, 'base', 'kustomization.yaml')).find(isKustomization)!;
const rendered = renderKustomization(readKustomization(base), base.object);
const workloads = rendered
  .map((doc) => doc.object as { kind: string; metadata: { name: string }; spec?: { template?: IPodTemplateSpec } })
  .filter((object) => (object.kind === 'Deployment' || object.kind === 'DaemonSet') && object.spec?.template);

/** Labels every series gets besides its own: the scrape's instance and job, the service (MetricsRegistry), and the relabelled ones. */
const SCRAPE_LABELS = new Set([
  'instance',
  'job',
  'service',
  ...(kilnJob.relabel_configs ?? []).map((rule) => rule.target_label).filter((label): label is string => !!label && !label.startsWith('__')),
]);

describe('Prometheus job for Kubernetes (deploy/prometheus/prometheus.yml)', () => {
  it('discovers pods in the kiln namespace', () => {
    expect(kilnJob.kubernetes_sd_configs).toEqual([{ role: 'pod', namespaces: { names: ['kiln'] } }]);
  });

  it.each(workloads.map((w) => [w.metadata.name, w] as const))('scrapes %s once, on the port and path its annotations announce', (name, workload) => {
    const template = workload.spec!.template!;
    const annotations = template.metadata?.annotations ?? {};
    const httpPort = template.spec?.containers[0].ports?.find((port) => port.name === 'http')?.containerPort;
    expect(annotations['prometheus.io/port']).toBe(String(httpPort));
    expect(scrapedTargets(template, `${name}-0`)).toEqual([
      { __address__: `10.1.0.7:${httpPort}`, __metrics_path__: annotations['prometheus.io/path'], app: name, pod: `${name}-0`, node: 'sandbox-host-1' },
    ]);
  });

  it('scrapes nothing of a pod that does not ask for it (guards the simulation)', () => {
    const template = structuredClone(workloads[0].spec!.template!);
    template.metadata!.annotations = { ...template.metadata!.annotations, 'prometheus.io/scrape': 'false' };
    expect(scrapedTargets(template, 'x')).toEqual([]);
  });
});

describe('Prometheus job for the dev stack (deploy/prometheus/prometheus-dev.yml)', () => {
  it("targets each app's HTTP port as tools/stack/apps.sh assigns it", () => {
    const appsSh = readFileSync(join(REPO_ROOT, 'tools', 'stack', 'apps.sh'), 'utf8');
    const stackPorts = Object.fromEntries([...appsSh.matchAll(/\[([a-z-]+)\]=\$\{[A-Z_]+_HTTP_PORT:-(\d+)\}/g)].map((m) => [m[1], `127.0.0.1:${m[2]}`]));
    expect(Object.keys(stackPorts).sort()).toEqual(workloads.map((w) => w.metadata.name).sort());
    const [job] = prometheusDev.scrape_configs;
    const targets = Object.fromEntries((job.static_configs ?? []).flatMap((group) => group.targets.map((target) => [group.labels?.app, target])));
    expect(targets).toEqual(stackPorts);
    expect(job.job_name).toBe(kilnJob.job_name);
  });
});

// ---- Grafana ----------------------------------------------------------------------------------

interface Target {
  expr?: string;
  datasource?: { type?: string; uid?: string };
}

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
}

const dashboard = JSON.parse(readFileSync(join(DEPLOY_ROOT, 'grafana', 'kiln-fleet.json'), 'utf8')) as {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query?: unknown }> };
};
const queryPanels = dashboard.panels.filter((panel) => panel.type !== 'row');
const queries = queryPanels.flatMap((panel) => (panel.targets ?? []).map((target) => ({ panel: panel.title, expr: target.expr ?? '' })));
const variables = new Set(dashboard.templating.list.map((variable) => variable.name));
/** Grafana's own variables the queries may use. */
const BUILT_IN_VARIABLES = new Set(['__rate_interval', '__interval', '__range']);

/** What the issue asks the dashboard to show: capacity and usage per host, placement latency, heartbeat lag, reconcile actions. */
const FLEET_METRICS = [
  'kiln_host_capacity',
  'kiln_host_usage',
  'kiln_host_state',
  'kiln_host_heartbeat_lag_seconds',
  'kiln_host_heartbeats_total',
  'kiln_host_transitions_total',
  'kiln_placement_duration_seconds',
  'kiln_placements_total',
  'kiln_reconcile_fixes_total',
];

describe('Grafana dashboard (deploy/grafana/kiln-fleet.json)', () => {
  it('finds the metric registrations it checks against (guards the source scan)', () => {
    expect(REGISTERED.get('kiln_reconcile_fixes_total')).toMatchObject({ type: 'counter', labels: ['kind'] });
    expect(REGISTERED.get('kiln_host_usage')).toMatchObject({ type: 'gauge', labels: ['host', 'resource'] });
    expect(REGISTERED.get('kiln_host_heartbeat_lag_seconds')).toMatchObject({ type: 'histogram', labels: [] });
    expect(REGISTERED.size).toBeGreaterThan(20);
  });

  it('has a stable uid, unique panel ids, and panels that fit the 24-column grid without overlapping', () => {
    expect(dashboard.uid).toBe('kiln-fleet');
    const ids = dashboard.panels.map((panel) => panel.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const { title, gridPos } of dashboard.panels) {
      expect([title, gridPos.x >= 0 && gridPos.w > 0 && gridPos.x + gridPos.w <= 24 && gridPos.h > 0]).toEqual([title, true]);
    }
    const overlapping: string[] = [];
    dashboard.panels.forEach((a, i) =>
      dashboard.panels.slice(i + 1).forEach((b) => {
        const apart = a.gridPos.x + a.gridPos.w <= b.gridPos.x || b.gridPos.x + b.gridPos.w <= a.gridPos.x || a.gridPos.y + a.gridPos.h <= b.gridPos.y || b.gridPos.y + b.gridPos.h <= a.gridPos.y;
        if (!apart) overlapping.push(`${a.title} / ${b.title}`);
      }),
    );
    expect(overlapping).toEqual([]);
  });

  it('queries Prometheus through the datasource variable only, and uses only variables it defines', () => {
    expect(dashboard.templating.list.find((variable) => variable.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    for (const panel of queryPanels) {
      expect([panel.title, panel.datasource?.uid, (panel.targets ?? []).length > 0]).toEqual([panel.title, '${datasource}', true]);
      for (const target of panel.targets ?? []) expect([panel.title, target.datasource?.uid]).toEqual([panel.title, '${datasource}']);
    }
    for (const { panel, expr } of queries) {
      const used = [...expr.matchAll(/\$\{?(\w+)\}?/g)].map((m) => m[1]);
      expect([panel, used.filter((name) => !variables.has(name) && !BUILT_IN_VARIABLES.has(name))]).toEqual([panel, []]);
    }
  });

  it('has balanced brackets in every query', () => {
    for (const { panel, expr } of queries) {
      let opened = 0;
      let broken = false;
      const stack: string[] = [];
      for (const char of expr.replace(/"[^"]*"/g, '""')) {
        if ('({['.includes(char)) {
          stack.push(char);
          opened++;
        }
        if (')}]'.includes(char)) broken ||= stack.pop() !== { ')': '(', '}': '{', ']': '[' }[char];
      }
      expect([panel, expr, broken || stack.length > 0, opened > 0]).toEqual([panel, expr, false, true]);
    }
  });

  it('queries only metrics the code registers, with labels they have and label values the code uses', () => {
    const problems: string[] = [];
    for (const { panel, expr } of queries) {
      const metricsHere = [...expr.matchAll(/\bkiln_[a-z0-9_]+/g)].map((m) => m[0]);
      const known = metricsHere.map((series) => [series, metricOf(series)] as const);
      for (const [series, found] of known) if (!found) problems.push(`${panel}: ${series} is not registered by any app`);
      for (const match of expr.matchAll(/\b(kiln_[a-z0-9_]+)\{([^}]*)\}/g)) {
        const found = metricOf(match[1]);
        if (!found) continue;
        for (const matcher of match[2].matchAll(/(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"/g)) {
          const [, label, operator, value] = matcher;
          const allowed = found.metric.labels.includes(label) || SCRAPE_LABELS.has(label) || (found.bucket && label === 'le');
          if (!allowed) problems.push(`${panel}: ${match[1]} has no label ${label}`);
          if (operator === '=' && found.metric.labels.includes(label) && !STRING_LITERALS.has(value)) {
            problems.push(`${panel}: ${match[1]}{${label}="${value}"}: the code never uses the value '${value}'`);
          }
        }
      }
      const labelsHere = new Set([...SCRAPE_LABELS, 'le', ...known.flatMap(([, found]) => found?.metric.labels ?? [])]);
      for (const grouping of expr.matchAll(/\b(?:by|on)\s*\(([^)]*)\)/g)) {
        for (const label of grouping[1].split(',').map((l) => l.trim()).filter(Boolean)) {
          if (!labelsHere.has(label)) problems.push(`${panel}: groups by ${label}, which none of its metrics has`);
        }
      }
    }
    expect(problems).toEqual([]);
  });

  it('shows the fleet: capacity and usage per host, host states, heartbeat lag, placement latency and reconcile actions', () => {
    const shown = new Set(queries.flatMap(({ expr }) => [...expr.matchAll(/\bkiln_[a-z0-9_]+/g)].map((m) => metricOf(m[0])?.name)));
    expect(FLEET_METRICS.filter((metric) => !shown.has(metric))).toEqual([]);
    expect(queries.some(({ expr }) => expr.includes('kiln_reconcile_fixes_total{kind="host_lost"}'))).toBe(true);
  });
});
