import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { eventually } from '@kiln/testing';
import { NOT_SUPPORTED_ROUTES } from '../../../apps/gateway/src/not-supported/not-supported-routes';
import { createSandbox } from '../../e2e/harness/api-client';
import { envdProcessClient, runCommand } from '../../e2e/harness/envd-client';
import { ROOT, StackInfo, alive, StackOptions, startStack, stopStack } from '../../e2e/harness/stack-harness';
import { FuzzTargets, SCRATCH_DIR, envdRequest, restRequest, trafficRequest } from '../support/arbitraries';
import { mib, rssOfPid, rssTolerance } from '../support/process-memory';
import { RawRequest, RawResponse, describeRequest, sendRaw } from '../support/raw-http';

/** The fuzz stack: its own data dir, slot prefix and CIDR, beside the e2e (ke2e, 10.201/20) and fault (kflt, 10.202/20) stacks. */
const FUZZ_STACK: StackOptions = {
  name: 'fuzz',
  dataDir: '/var/lib/kiln-fuzz',
  networkPrefix: 'kfuz',
  slotCidr: '10.220.0.0/20',
  stackFile: join(ROOT, '.kiln', 'fuzz', 'stack.json'),
  // The fuzz sends thousands of requests with bad or no API keys: the per-address limit for those would answer most
  // of them 429 before they reach the code under test.
  // Generated forks that succeed each start a VM: the team's sandbox quota (the live and persistence sandboxes plus
  // two) bounds how many can run at once; the rest are answered 429.
  commonEnv: { RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE: '1000000', TEAM_MAX_CONCURRENT_SANDBOXES: '4' },
};
const FAILURES_FILE = join(ROOT, '.kiln', 'fuzz', 'failures.log');

/** Fixed so a failure reproduces; KILN_FUZZ_SEED picks another sequence. */
const SEED = Number(process.env.KILN_FUZZ_SEED ?? 20_261_207);
const TOTAL_REQUESTS = Number(process.env.KILN_FUZZ_REQUESTS ?? 10_000);
/** Requests by surface (shares of the total) and how many are in flight at once: sized for 2 cores and a TCG guest. */
const SURFACES = {
  rest: { share: 0.5, concurrency: 8 },
  traffic: { share: 0.2, concurrency: 6 },
  envd: { share: 0.3, concurrency: 4 },
} as const;
type Surface = keyof typeof SURFACES;
// Large enough that the allocators reach their working size at the run's concurrency: with 150 per surface the
// gateway's RSS baseline sat ~25 MiB under its plateau (native memory, V8's heap meanwhile shrank), and a run failed
// on that, not on a leak.
const WARM_UP_PER_SURFACE = 500;
const SETTLE_MS = 15_000;
const SETTLE_DEADLINE_MS = 120_000;
const USER_PORT = 8000;
const ENVD_PORT = 49983;

type Verdict = 'ok' | 'documented' | 'reset-early' | 'failure';
/** The gateway's REST body limit (apps/gateway/src/gateway.ts) and Node's default header limit (16 KiB). */
const API_BODY_LIMIT_BYTES = 1024 * 1024;
const NODE_MAX_HEADER_BYTES = 16 * 1024;

/**
 * The property every answer must have: below 500. The only exceptions are E2B's own contracts at or above 500, each
 * matched by its exact body: 501 for a route Kiln does not implement yet, 502 "The sandbox was not found" for a
 * well-formed id that names no sandbox (the SDK reads it as "not running"). No answer at all is a failure too, and
 * so is a Connect stream that ended with an internal error (its HTTP status is 200).
 */
export function verdictOf(request: RawRequest, response: RawResponse): { verdict: Verdict; why?: string } {
  if (response.status === 0) {
    // A server that refuses a request before reading its body (413, 431) closes with the body still arriving; the
    // kernel then resets the connection, which discards the answer in flight. That is TCP, not the server.
    if (response.error === 'ECONNRESET' || response.error === 'EPIPE') {
      const headerBytes = request.headers.reduce((n, [k, v]) => n + k.length + v.length + 4, request.target.length);
      if ((request.body?.length ?? 0) >= API_BODY_LIMIT_BYTES || headerBytes >= NODE_MAX_HEADER_BYTES) return { verdict: 'reset-early' };
    }
    return { verdict: 'failure', why: `no answer (${response.error})` };
  }
  if (response.status >= 500) {
    // HEAD answers carry no body to check: the generator only marks routes whose GET is the documented answer.
    if (request.method.toUpperCase() === 'HEAD' && request.documented5xx && (response.status === 501 || response.status === 502)) return { verdict: 'documented' };
    const body = parseJson(response.body);
    if (request.documented5xx === 'not-supported' && response.status === 501 && body?.code === 501 && /is not supported by this deployment yet$/.test(String(body?.message))) {
      return { verdict: 'documented' };
    }
    if (request.documented5xx === 'sandbox-not-found' && response.status === 502 && body?.message === 'The sandbox was not found') return { verdict: 'documented' };
    return { verdict: 'failure', why: `status ${response.status}` };
  }
  if (/content-type: application\/connect\+/i.test(response.head) && /"code":"(internal|unknown|data_loss)"/.test(response.body)) {
    return { verdict: 'failure', why: 'Connect stream ended with an internal error' };
  }
  return { verdict: 'ok' };
}

function parseJson(text: string): Record<string, unknown> | undefined {
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

class Tally {
  readonly requests: Record<string, number> = {};
  readonly statuses: Record<string, Record<string, number>> = {};
  readonly documented: Record<string, number> = {};
  readonly failures: string[] = [];
  /** Failures by cause, surface, generator and method: one line per class in the report. */
  readonly failureGroups = new Map<string, number>();

  record(request: RawRequest, response: RawResponse): void {
    const { verdict, why } = verdictOf(request, response);
    this.requests[request.surface] = (this.requests[request.surface] ?? 0) + 1;
    const histogram = (this.statuses[request.surface] ??= {});
    const key = response.status ? String(response.status) : `none:${response.error}`;
    histogram[key] = (histogram[key] ?? 0) + 1;
    if (verdict === 'documented' || verdict === 'reset-early') {
      const key = verdict === 'documented' ? `${request.surface} ${response.status}` : `${request.surface} reset-early`;
      this.documented[key] = (this.documented[key] ?? 0) + 1;
    }
    if (verdict === 'failure') {
      this.failures.push(`${why}: ${describeRequest(request)}\n    -> ${response.head.split('\r\n')[0]} ${JSON.stringify(response.body.slice(0, 400))}`);
      const group = `${why} [${request.surface}/${request.kind}] ${request.method}`;
      this.failureGroups.set(group, (this.failureGroups.get(group) ?? 0) + 1);
    }
  }
}

/** Sends every request, `concurrency` at a time, recording each answer. */
async function sendAll(port: number, requests: RawRequest[], concurrency: number, tally: Tally): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < requests.length) {
        const request = requests[next++];
        tally.record(request, await sendRaw(port, request));
      }
    }),
  );
}

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

function portOf(url: string): number {
  return Number(new URL(url).port);
}

describe('malformed input fuzz (REST API, sandbox-traffic listener, envd)', () => {
  let stack: StackInfo;
  let targets: FuzzTargets;
  let startedPids: Record<string, number>;
  let persistenceToken: string;

  const guest = () => envdProcessClient(stack.sandboxUrl, targets.sandboxId, targets.envdAccessToken);

  /** The guest agent's pid and RSS, read inside the sandbox (ps from procps). */
  async function guestAgentMemory(): Promise<{ pid: number; rss: number }> {
    const result = await runCommand(guest(), "ps -eo pid=,rss=,args= | awk '$3 ~ /node$/ && /guest-agent[.]js/ {print $1, $2; exit}'");
    const [pid, rssKb] = result.stdout.trim().split(/\s+/).map(Number);
    if (!pid || !rssKb) throw new Error(`no guest agent in ps output: ${JSON.stringify(result)}`);
    return { pid, rss: rssKb * 1024 };
  }

  /**
   * V8 heap in use plus memory held outside it (Buffers) per app, from prom-client's default metrics: what a leak of
   * objects or buffers would grow, printed beside RSS (which also counts pages the allocator keeps after a free).
   */
  async function heapUsed(): Promise<Record<string, number>> {
    const used: Record<string, number> = {};
    const metric = (text: string, name: string) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\d+(?:\\.\\d+)?)`, 'm').exec(text)?.[1] ?? NaN);
    for (const name of ['gateway', 'scheduler', 'host-agent']) {
      const text = await (await fetch(`http://127.0.0.1:${stack.httpPorts[name]}/metrics`)).text();
      used[name] = metric(text, 'nodejs_heap_size_used_bytes') + metric(text, 'nodejs_external_memory_bytes');
    }
    return used;
  }

  async function memory(): Promise<Record<string, number>> {
    const sizes: Record<string, number> = {};
    for (const name of ['gateway', 'scheduler', 'host-agent']) sizes[name] = rssOfPid(stack.pids[name]);
    sizes['guest-agent'] = (await guestAgentMemory()).rss;
    return sizes;
  }

  /** Well-formed requests on every surface answer 2xx: the probes reach what they fuzz. */
  async function controls(): Promise<void> {
    const routing: Array<[string, string]> = [
      ['Host', '127.0.0.1'],
      ['E2b-Sandbox-Id', targets.sandboxId],
      ['E2b-Sandbox-Port', String(ENVD_PORT)],
      ['X-Access-Token', targets.envdAccessToken],
    ];
    const checks: Array<[number, RawRequest, number]> = [
      [portOf(stack.apiUrl), { surface: 'control', kind: 'get sandbox', method: 'GET', target: `/sandboxes/${targets.sandboxId}`, headers: [['Host', '127.0.0.1'], ['X-API-Key', stack.apiKey]] }, 200],
      [portOf(stack.sandboxUrl), { surface: 'control', kind: 'envd health', method: 'GET', target: '/health', headers: routing }, 204],
      [
        portOf(stack.sandboxUrl),
        { surface: 'control', kind: 'user port', method: 'GET', target: '/', headers: [['Host', `${USER_PORT}-${targets.sandboxId}.${stack.domain}`]] },
        200,
      ],
      [
        portOf(stack.sandboxUrl),
        {
          surface: 'control',
          kind: 'envd stat',
          method: 'POST',
          target: '/filesystem.Filesystem/Stat',
          headers: [...routing, ['Content-Type', 'application/json']],
          body: Buffer.from(JSON.stringify({ path: SCRATCH_DIR })),
        },
        200,
      ],
    ];
    for (const [port, request, expected] of checks) {
      const response = await sendRaw(port, request);
      expect({ kind: request.kind, status: response.status }).toEqual({ kind: request.kind, status: expected });
    }
  }

  const api = (path: string, init: RequestInit = {}) =>
    fetch(`${stack.apiUrl}${path}`, {
      ...init,
      headers: { 'X-API-Key': stack.apiKey, ...(init.body ? { 'content-type': 'application/json' } : {}) },
      signal: AbortSignal.timeout(120_000),
    });

  /**
   * The persistence routes reach the code they fuzz: its sandbox pauses (204) and comes back (201), then runs; it forks
   * (one fork, 201) and snapshots (201). The fork and the snapshot stay for the run and go in the clean-up, which must
   * find them.
   */
  async function persistenceControls(): Promise<void> {
    const id = targets.persistenceSandboxId;
    expect((await api(`/sandboxes/${id}/pause`, { method: 'POST', body: '{}' })).status).toBe(204);
    expect((await api(`/sandboxes/${id}/connect`, { method: 'POST', body: JSON.stringify({ timeout: 3600 }) })).status).toBe(201);
    expect((await runCommand(envdProcessClient(stack.sandboxUrl, id, persistenceToken), 'echo alive')).stdout).toBe('alive\n');
    const fork = await api(`/sandboxes/${id}/fork`, { method: 'POST', body: JSON.stringify({ count: 1, timeout: 3600 }) });
    expect(fork.status).toBe(201);
    expect(((await fork.json()) as Array<{ sandbox?: { sandboxID: string } }>)[0]?.sandbox?.sandboxID).toEqual(expect.any(String));
    const snapshot = await api(`/sandboxes/${id}/snapshots`, { method: 'POST', body: JSON.stringify({ name: 'fuzz-control' }) });
    expect(snapshot.status).toBe(201);
  }

  /** Checkpoint directories on the fuzz stack's host: pause checkpoints by clone, fork and snapshot checkpoints. */
  function checkpointDirs(): { pausedClones: string[]; forks: string[]; snapshots: string[] } {
    const under = (...parts: string[]) => {
      const dir = join(stack.dataDir, ...parts);
      return existsSync(dir) ? readdirSync(dir) : [];
    };
    return {
      pausedClones: under('clones').filter((clone) => existsSync(join(stack.dataDir, 'clones', clone, 'paused'))),
      forks: under('checkpoints', 'forks'),
      snapshots: under('checkpoints', 'snapshots'),
    };
  }

  /**
   * After the fuzz: the persistence sandbox ended running or paused, never lost or half-way, and works once resumed;
   * every fork and snapshot the generated requests made is killed or deleted, and their checkpoints are gone.
   */
  async function cleanUpPersistence(): Promise<{ endedAs: string; forksKilled: number; snapshotsDeleted: number }> {
    const id = targets.persistenceSandboxId;
    const shown = await api(`/sandboxes/${id}`);
    expect(shown.status).toBe(200);
    const endedAs = ((await shown.json()) as { state: string }).state;
    expect(['running', 'paused']).toContain(endedAs);
    if (endedAs === 'paused') expect((await api(`/sandboxes/${id}/connect`, { method: 'POST', body: JSON.stringify({ timeout: 3600 }) })).status).toBe(201);
    expect((await runCommand(envdProcessClient(stack.sandboxUrl, id, persistenceToken), 'echo alive')).stdout).toBe('alive\n');

    const listed = await api('/v2/sandboxes?state=running,paused&limit=100');
    expect(listed.status).toBe(200);
    const forks = ((await listed.json()) as Array<{ sandboxID: string }>).map((s) => s.sandboxID).filter((s) => s !== id && s !== targets.sandboxId);
    for (const fork of forks) expect({ fork, status: (await api(`/sandboxes/${fork}`, { method: 'DELETE' })).status }).toEqual({ fork, status: 204 });
    let snapshotsDeleted = 0;
    for (;;) {
      const page = await api('/snapshots?limit=100');
      expect(page.status).toBe(200);
      const snapshots = (await page.json()) as Array<{ snapshotID: string }>;
      if (!snapshots.length) break;
      for (const { snapshotID } of snapshots) {
        expect({ snapshotID, status: (await api(`/templates/${encodeURIComponent(snapshotID)}`, { method: 'DELETE' })).status }).toEqual({ snapshotID, status: 204 });
        snapshotsDeleted++;
      }
    }
    // Checkpoints nobody references are collected after each teardown and delete.
    await eventually('the fork and snapshot checkpoints to be collected', async () => {
      const dirs = checkpointDirs();
      return dirs.pausedClones.length + dirs.forks.length + dirs.snapshots.length === 0 ? true : undefined;
    }, { timeoutMs: 60_000 }).catch(() => undefined);
    expect(checkpointDirs()).toEqual({ pausedClones: [], forks: [], snapshots: [] });
    return { endedAs, forksKilled: forks.length, snapshotsDeleted };
  }

  beforeAll(async () => {
    stack = await startStack(FUZZ_STACK);
    startedPids = { ...stack.pids };
    const sandbox = await createSandbox(stack, { timeout: 3600 });
    const persistenceSandbox = await createSandbox(stack, { timeout: 3600 });
    persistenceToken = persistenceSandbox.envdAccessToken!;
    const openapi = (await (await fetch(`${stack.apiUrl}/openapi.json`)).json()) as { paths: Record<string, Record<string, unknown>> };
    const restRoutes = [
      ...Object.entries(openapi.paths).flatMap(([path, methods]) => Object.keys(methods).map((method) => ({ method: method.toUpperCase(), path }))),
      ...NOT_SUPPORTED_ROUTES.map(({ method, path }) => ({ method, path })),
    ];
    targets = {
      apiKey: stack.apiKey,
      otherTeamApiKey: stack.otherTeamApiKey,
      sandboxId: sandbox.sandboxID,
      persistenceSandboxId: persistenceSandbox.sandboxID,
      envdAccessToken: sandbox.envdAccessToken!,
      domain: stack.domain,
      userPort: USER_PORT,
      restRoutes,
      notSupported: new Set(NOT_SUPPORTED_ROUTES.map(({ method, path }) => `${method} ${path}`)),
      notSupportedMethods: new Set(NOT_SUPPORTED_ROUTES.map(({ method }) => method)),
    };
    // A server of our own on a user port (Node's: it answers every method, unlike python's http.server's 501s), and
    // the scratch directory generated writes stay under.
    const server = `require("http").createServer((q, s) => { q.resume(); q.on("end", () => s.end("ok")); }).listen(${USER_PORT})`;
    await runCommand(guest(), `mkdir -p ${SCRATCH_DIR} && chmod 777 ${SCRATCH_DIR} && (nohup node -e '${server}' >/tmp/fuzz-user-server.log 2>&1 &)`);
    await eventually(
      'the user-port server to answer',
      async () => {
        const r = await sendRaw(portOf(stack.sandboxUrl), { surface: 'control', kind: 'user port', method: 'GET', target: '/', headers: [['Host', `${USER_PORT}-${targets.sandboxId}.${stack.domain}`]] });
        return r.status === 200 ? true : undefined;
      },
      { timeoutMs: 60_000 },
    );
  }, 900_000);

  afterAll(async () => {
    if (stack) await stopStack(stack);
  }, 300_000);

  it('the verdict flags a 500 and passes only the exact E2B 501/502 bodies (the detector works)', () => {
    const request: RawRequest = { surface: 'rest', kind: 'x', method: 'GET', target: '/', headers: [], documented5xx: 'not-supported' };
    const answer = (status: number, body: unknown): RawResponse => ({ status, head: `HTTP/1.1 ${status} X`, body: JSON.stringify(body) });
    expect(verdictOf(request, answer(500, { code: 500, message: 'internal error' })).verdict).toBe('failure');
    expect(verdictOf(request, answer(501, { code: 501, message: 'GET /x (y) is not supported by this deployment yet' })).verdict).toBe('documented');
    expect(verdictOf(request, answer(501, { code: 501, message: 'boom' })).verdict).toBe('failure');
    expect(verdictOf({ ...request, documented5xx: 'sandbox-not-found' }, answer(502, { code: 502, message: 'The sandbox was not found' })).verdict).toBe('documented');
    expect(verdictOf({ ...request, documented5xx: undefined }, answer(502, { code: 502, message: 'The sandbox was not found' })).verdict).toBe('failure');
    expect(verdictOf(request, { status: 0, head: '', body: '', error: 'timeout' }).verdict).toBe('failure');
    expect(verdictOf(request, answer(400, { code: 400, message: 'bad' })).verdict).toBe('ok');
    expect(verdictOf({ ...request, body: Buffer.alloc(API_BODY_LIMIT_BYTES) }, { status: 0, head: '', body: '', error: 'ECONNRESET' }).verdict).toBe('reset-early');
    expect(verdictOf(request, { status: 0, head: '', body: '', error: 'ECONNRESET' }).verdict).toBe('failure');
  });

  it(`answers ${TOTAL_REQUESTS} malformed requests below 500, crashes nothing and leaks no memory`, async () => {
    const ports: Record<Surface, number> = { rest: portOf(stack.apiUrl), traffic: portOf(stack.sandboxUrl), envd: portOf(stack.sandboxUrl) };
    const arbitraries: Record<Surface, fc.Arbitrary<RawRequest>> = { rest: restRequest(targets), traffic: trafficRequest(targets), envd: envdRequest(targets) };
    const surfaces = Object.keys(SURFACES) as Surface[];
    say(
      `fuzz seed ${SEED} (KILN_FUZZ_SEED), ${TOTAL_REQUESTS} requests (KILN_FUZZ_REQUESTS); sandbox ${targets.sandboxId}, ` +
        `persistence sandbox ${targets.persistenceSandboxId}; ${targets.restRoutes.length} REST routes`,
    );
    await controls();
    await persistenceControls();

    // Warm-up with another seed: JIT, connection pools and caches reach their working size before the baseline.
    const warmUp = new Tally();
    for (const [i, surface] of surfaces.entries()) {
      await sendAll(ports[surface], fc.sample(arbitraries[surface], { seed: SEED + 1000 + i, numRuns: WARM_UP_PER_SURFACE }), SURFACES[surface].concurrency, warmUp);
    }
    await new Promise((r) => setTimeout(r, 5_000));
    const baseline = await memory();
    const heapBefore = await heapUsed();
    const guestBefore = await guestAgentMemory();
    say(`baseline RSS after ${WARM_UP_PER_SURFACE * surfaces.length} warm-up requests: ${Object.entries(baseline).map(([n, b]) => `${n} ${mib(b)}`).join(', ')}`);

    const tally = new Tally();
    const started = Date.now();
    for (const [i, surface] of surfaces.entries()) {
      const count = Math.round(TOTAL_REQUESTS * SURFACES[surface].share);
      const requests = fc.sample(arbitraries[surface], { seed: SEED + i, numRuns: count });
      const surfaceStart = Date.now();
      await sendAll(ports[surface], requests, SURFACES[surface].concurrency, tally);
      say(`${surface}: ${count} requests in ${((Date.now() - surfaceStart) / 1000).toFixed(1)} s`);
    }
    say(`fuzz: ${Object.values(tally.requests).reduce((a, b) => a + b, 0)} requests in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    for (const surface of surfaces) {
      const histogram = Object.entries(tally.statuses[surface] ?? {}).sort(([a], [b]) => a.localeCompare(b));
      say(`  ${surface}: ${tally.requests[surface] ?? 0} requests; statuses ${histogram.map(([s, n]) => `${s}:${n}`).join(' ')}`);
    }
    say(`  documented E2B answers >= 500 and resets after an early refusal: ${JSON.stringify(tally.documented)}`);
    say(`  failures: ${tally.failures.length}`);
    for (const [group, count] of [...tally.failureGroups].sort((a, b) => b[1] - a[1])) say(`    ${count} x ${group}`);
    for (const failure of tally.failures.slice(0, 40)) say(`  ${failure}`);
    // All of them, for a long list: the report above shows each class and the first 40.
    writeFileSync(FAILURES_FILE, tally.failures.join('\n') + '\n');
    if (tally.failures.length) say(`  every failure with its request: ${FAILURES_FILE}`);

    // Nothing crashed: every app's pid is the one the stack started and answers /health; the sandbox still runs commands.
    for (const [name, port] of Object.entries(stack.httpPorts)) {
      const health = await fetch(`http://127.0.0.1:${port}/health`);
      expect({ name, status: health.status }).toEqual({ name, status: 200 });
    }
    for (const [name, pid] of Object.entries(startedPids)) expect({ name, alive: alive(pid) }).toEqual({ name, alive: true });
    await controls();
    const guestAfter = await guestAgentMemory();
    expect(guestAfter.pid).toBe(guestBefore.pid);
    const persistence = await cleanUpPersistence();
    // At least the control's fork and snapshot.
    expect(persistence.forksKilled).toBeGreaterThanOrEqual(1);
    expect(persistence.snapshotsDeleted).toBeGreaterThanOrEqual(1);
    say(`  persistence sandbox ended ${persistence.endedAs} and works; forks killed ${persistence.forksKilled}, snapshots deleted ${persistence.snapshotsDeleted}; no checkpoint left`);

    // Memory back to its baseline once the run is over: polled, since each process frees on its own GC schedule.
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    let after = await memory();
    const within = (sizes: Record<string, number>) => Object.keys(baseline).every((name) => sizes[name] <= baseline[name] + rssTolerance(baseline[name]));
    const settleDeadline = Date.now() + SETTLE_DEADLINE_MS;
    while (!within(after) && Date.now() < settleDeadline) {
      await new Promise((r) => setTimeout(r, 5_000));
      after = await memory();
    }
    const heapAfter = await heapUsed();
    for (const name of Object.keys(baseline)) {
      const heap = name in heapBefore ? `; V8 heap used + external ${mib(heapBefore[name])} -> ${mib(heapAfter[name])}` : '';
      say(`  RSS ${name}: before ${mib(baseline[name])}, after ${mib(after[name])} (limit ${mib(baseline[name] + rssTolerance(baseline[name]))})${heap}`);
    }
    for (const name of Object.keys(baseline)) {
      expect({ name, withinTolerance: after[name] <= baseline[name] + rssTolerance(baseline[name]) }).toEqual({ name, withinTolerance: true });
    }
    expect(tally.failures).toEqual([]);
  });
});
