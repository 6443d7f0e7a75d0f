import fc from 'fast-check';
import type { RawRequest } from './raw-http';

/** What the generators need to know about the stack under test. */
export interface FuzzTargets {
  apiKey: string;
  otherTeamApiKey: string;
  /** The one live sandbox; never killed, paused, forked, snapshotted, shortened or re-initialised by a generated request. */
  sandboxId: string;
  /**
   * The sandbox the pause, resume, connect, fork and snapshot routes act on: generated requests may pause and resume
   * it (it may end either way), fork it and snapshot it, but never kill or shorten it, never pause it without its
   * memory, and only sometimes send a fork or snapshot that could succeed (each costs a VM or a disk copy).
   */
  persistenceSandboxId: string;
  envdAccessToken: string;
  domain: string;
  /** A port inside the sandbox with a server of our own on it (user-port traffic). */
  userPort: number;
  /** REST routes from the gateway's /openapi.json, `{param}` form. */
  restRoutes: Array<{ method: string; path: string }>;
  /** `METHOD /path` of the routes Kiln answers 501 (E2B routes not implemented yet). */
  notSupported: Set<string>;
  /** The methods of those routes. */
  notSupportedMethods: Set<string>;
}

/** Directory inside the sandbox every generated write stays under (no '..' is ever generated for writes). */
export const SCRATCH_DIR = '/tmp/fuzz';
const ENVD_PORT = 49983;
/** Never a real pid (pid_max is at most 4194304): generated signals and inputs can reach no process. */
const NO_SUCH_PID_MIN = 10_000_000;

// ---------------------------------------------------------------------------------------------------------------
// Odd building blocks
// ---------------------------------------------------------------------------------------------------------------

const NASTY = [
  '',
  ' ',
  '\0',
  'a\0b',
  '%00',
  '%zz',
  '%',
  '..',
  '../../../../etc/passwd',
  '\u202e',
  '\ud800',
  '\udfff',
  '💥',
  'ﷺ',
  '\r\n',
  'null',
  'undefined',
  '__proto__',
  'constructor',
  'NaN',
  '-1',
  '0',
  '1e309',
  '9007199254740993',
  '{}',
  '[]',
  '"',
  "'",
  '\\',
  '${x}',
  '<script>',
  'A'.repeat(300),
];

/** Strings that break things: control and bidi characters, lone surrogates, huge, percent garbage. */
export const oddString: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'grapheme', maxLength: 20 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 20 }) },
  { weight: 3, arbitrary: fc.constantFrom(...NASTY) },
  { weight: 1, arbitrary: fc.integer({ min: 1_000, max: 100_000 }).map((n) => 'x'.repeat(n)) },
);

/** Any JSON-ish value of the wrong kind for almost any field. */
export const oddValue: fc.Arbitrary<unknown> = fc.oneof(
  oddString,
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.constantFrom(-1, 0, 2 ** 31, 2 ** 53 + 1, 1e308, -1e308),
  fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 5 }),
  fc.dictionary(oddString, fc.jsonValue({ maxDepth: 2 }), { maxKeys: 5 }),
  fc.jsonValue({ maxDepth: 3 }),
);

/** A JSON object with the given field names (some) mixed with odd ones, every value odd. */
function oddObject(fields: string[]): fc.Arbitrary<Record<string, unknown>> {
  return fc
    .tuple(
      fc.subarray(fields),
      fc.array(oddValue, { minLength: fields.length, maxLength: fields.length }),
      fc.dictionary(oddString, oddValue, { maxKeys: 2 }),
    )
    .map(([chosen, values, extra]) => {
      const object: Record<string, unknown> = { ...extra };
      chosen.forEach((field, i) => (object[field] = values[i]));
      return object;
    });
}

/** Bytes that are not the JSON they claim to be, or JSON of the wrong shape. */
function jsonBodyOf(objects: fc.Arbitrary<unknown>): fc.Arbitrary<Buffer> {
  return fc.oneof(
    { weight: 6, arbitrary: objects.map((o) => Buffer.from(JSON.stringify(o) ?? 'undefined')) },
    { weight: 1, arbitrary: objects.map((o) => Buffer.from((JSON.stringify(o) ?? '{').slice(0, -1))) },
    {
      weight: 2,
      arbitrary: fc.constantFrom(
        '{',
        '{"a":}',
        '{"a":1,}',
        "{'a':1}",
        'nul',
        '"unterminated',
        '[1,2',
        '{"a":"\\ud800"}',
        '{"__proto__":{"polluted":true}}',
        '{"constructor":{"prototype":{"polluted":true}}}',
        '\ufeff{}',
        '{"a":1}{"b":2}',
        '1e99999',
        '-',
        '\0',
        '{"a":NaN}',
        'true',
        'null',
        '[]',
        '""',
      ).map((s) => Buffer.from(s)),
    },
    { weight: 1, arbitrary: fc.integer({ min: 100, max: 5_000 }).map((depth) => Buffer.from('['.repeat(depth) + ']'.repeat(depth))) },
    { weight: 1, arbitrary: fc.integer({ min: 100, max: 5_000 }).map((depth) => Buffer.from('{"a":'.repeat(depth) + '1' + '}'.repeat(depth))) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 200 }).map((bytes) => Buffer.from(bytes)) },
    { weight: 1, arbitrary: oddString.map((s) => Buffer.from(s)) },
  );
}

/** Content types a JSON API may be sent: right, wrong, broken. */
const contentType: fc.Arbitrary<string | undefined> = fc.oneof(
  { weight: 4, arbitrary: fc.constant('application/json') },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      undefined,
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data',
      'multipart/form-data; boundary=',
      'application/json; charset=utf-16',
      'application/json; charset=nope',
      'application/json;;;',
      'application/*',
      '*/*',
      'application/octet-stream',
      'application/proto',
      'application/xml',
      '',
      'json',
    ),
  },
  { weight: 1, arbitrary: oddString.map((s) => s.replace(/[\r\n]/g, ' ')) },
);

/** Header values may not hold CR/LF (that would be a different request); everything else goes. */
function headerSafe(value: string): string {
  return value.replace(/[\r\n]/g, '_');
}

/** Query strings: repeated keys, arrays, percent garbage, unicode, huge. */
function oddQuery(knownKeys: string[]): fc.Arbitrary<string> {
  const key = fc.oneof(fc.constantFrom(...knownKeys, 'a[]', 'a[b]', '__proto__', '', '%zz'), oddString);
  const pair = fc.tuple(key, oddValue, fc.boolean()).map(([k, v, encode]) => {
    const value = typeof v === 'string' ? v : JSON.stringify(v) ?? '';
    return encode ? `${encodeURIComponent(k.replace(/[\ud800-\udfff]/g, '?'))}=${encodeURIComponent(value.replace(/[\ud800-\udfff]/g, '?'))}` : `${k}=${value}`;
  });
  return fc.oneof(fc.constant(''), fc.array(pair, { minLength: 1, maxLength: 5 }).map((pairs) => `?${pairs.join('&')}`), fc.constantFrom('?', '??', '?&&', '?=', '?a=%', '?a=%zz&a=%00'));
}

/** What goes in a raw request-target: spaces and control bytes would make it a different request line, so escape those. */
function targetSafe(target: string): string {
  return target.replace(/[\s\0]/g, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

const oddMethod = fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS', 'TRACE', 'PROPFIND', 'FOO', 'get', 'CONNECT', 'M-SEARCH', 'SEARCH', 'QUERY');

const hugeBody = fc.integer({ min: 1_100_000, max: 1_600_000 }).map((n) => Buffer.from(`{"templateID":"${'x'.repeat(n)}"}`));

// ---------------------------------------------------------------------------------------------------------------
// (a) the REST API
// ---------------------------------------------------------------------------------------------------------------

const SANDBOX_FIELDS = [
  'templateID',
  'timeout',
  'autoPause',
  'autoResume',
  'secure',
  'metadata',
  'envVars',
  'allow_internet_access',
  'network',
  'duration',
  'allowOut',
  'denyOut',
  'allowPublicTraffic',
  'maskRequestHost',
  'mcp',
  'volumeMounts',
];

const LIST_KEYS = ['metadata', 'state', 'order', 'startedAfter', 'template', 'limit', 'nextToken', 'start', 'end', 'cursor', 'direction', 'level', 'search', 'teamID'];

/** A create that could succeed would start a VM: any templateID that might name the base template is replaced. */
function neverCreates(body: Record<string, unknown>): Record<string, unknown> {
  if (typeof body.templateID === 'string' && /base/i.test(body.templateID)) return { ...body, templateID: 'fuzz-no-such-template' };
  return body;
}

/** The routes that act on the persistence sandbox (`{sandboxID}` is it, not the live sandbox). */
const PERSISTENCE_ROUTE = /^(\/v2)?\/sandboxes\/\{sandboxID\}\/(pause|resume|connect|fork|snapshots)$/;
/** Fields of their bodies (E2B's SandboxPauseRequest, ResumedSandbox/ConnectSandbox, SandboxForkRequest, SandboxSnapshotRequest). */
const PERSISTENCE_FIELDS = ['memory', 'timeout', 'autoPause', 'count', 'name', 'keepMemory'];
/** Fork counts and snapshot names that fail validation: what a fork or snapshot gets unless it may succeed. */
const BAD_FORK_COUNTS: unknown[] = [0, -1, 101, 1.5, '1', null, true, 2 ** 53, 'fuzz-not-a-number'];
const BAD_SNAPSHOT_NAMES: unknown[] = ['', 'Fuzz Upper Case', '-leading-dash', 'a/b', 'x'.repeat(65), 7, null, ['a'], '..'];

/**
 * What the persistence sandbox survives: pauses keep memory (a cold boot under TCG takes longer than the fuzz's answer
 * budget), resumes never shorten it, forks and snapshots are made malformed unless `mayAct` (about one in four).
 */
function persistenceBody(path: string, body: Buffer | undefined, mayAct: boolean, pick: number): Buffer | undefined {
  const action = /\/(pause|resume|connect|fork|snapshots)$/.exec(path)?.[1];
  const poison = (object: Record<string, unknown>): Record<string, unknown> => {
    if (action === 'fork' && !mayAct) return { ...object, count: BAD_FORK_COUNTS[pick % BAD_FORK_COUNTS.length] };
    if (action === 'fork') return { ...object, count: 1 };
    if (action === 'snapshots' && !mayAct) return { ...object, name: BAD_SNAPSHOT_NAMES[pick % BAD_SNAPSHOT_NAMES.length] };
    if (action === 'pause' && object.memory === false) return { ...object, memory: true };
    if ((action === 'resume' || action === 'connect') && typeof object.timeout === 'number' && object.timeout < 3600) return { ...object, timeout: 3600 };
    return object;
  };
  if (!body) return action === 'fork' || action === 'snapshots' ? Buffer.from(JSON.stringify(poison({}))) : undefined;
  try {
    const parsed = JSON.parse(body.toString('utf8'));
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) return Buffer.from(JSON.stringify(poison(parsed)));
  } catch {
    // not JSON: refused as it is
  }
  return body;
}

/** Changes the live sandbox could not survive (a timeout or refresh shortening it) are made malformed. */
function neverShortens(body: Record<string, unknown>): Record<string, unknown> {
  return { ...body, timeout: 'fuzz-not-a-number', duration: 'fuzz-not-a-number' };
}

export function restRequest(t: FuzzTargets): fc.Arbitrary<RawRequest> {
  const apiKeyHeader: fc.Arbitrary<Array<[string, string]>> = fc.oneof(
    { weight: 6, arbitrary: fc.constant([['X-API-Key', t.apiKey]] as Array<[string, string]>) },
    {
      weight: 4,
      arbitrary: fc.oneof(
        fc.constant([] as Array<[string, string]>),
        fc.constant([['X-API-Key', t.otherTeamApiKey]] as Array<[string, string]>),
        fc.constant([['X-API-Key', '']] as Array<[string, string]>),
        fc.constant([['X-API-Key', `${t.apiKey} `]] as Array<[string, string]>),
        fc.constant([['X-API-Key', t.apiKey.slice(0, -1)]] as Array<[string, string]>),
        fc.constant([['X-API-Key', t.apiKey], ['X-API-Key', t.otherTeamApiKey]] as Array<[string, string]>),
        oddString.map((s) => [['X-API-Key', headerSafe(s)]] as Array<[string, string]>),
        oddString.map((s) => [['X-API-Key', `e2b_${headerSafe(s)}`]] as Array<[string, string]>),
        oddString.map((s) => [['Authorization', `Bearer ${headerSafe(s)}`]] as Array<[string, string]>),
        fc.constant([['X-API-Key', 'k'.repeat(20_000)]] as Array<[string, string]>),
      ),
    },
  );
  const sandboxIdParam = fc.oneof(
    { weight: 3, arbitrary: fc.constant(t.sandboxId) },
    { weight: 2, arbitrary: fc.stringMatching(/^[a-z0-9]{20}$/) },
    { weight: 1, arbitrary: fc.constantFrom(t.sandboxId.toUpperCase(), `${t.sandboxId}x`, `${t.sandboxId}%00`, `${t.sandboxId}/..`, '..', '.', '%2e%2e', '%2F', 'a'.repeat(5000)) },
    { weight: 3, arbitrary: oddString.map((s) => encodeURIComponent(s.replace(/[\ud800-\udfff]/g, '\ufffd'))) },
    { weight: 1, arbitrary: oddString },
  );
  // Mostly the persistence sandbox itself: the state changes a valid request makes are what those routes are about.
  const persistenceIdParam = fc.oneof(
    { weight: 2, arbitrary: fc.constant(t.persistenceSandboxId) },
    { weight: 1, arbitrary: sandboxIdParam.map((id) => id.split(t.sandboxId).join(t.persistenceSandboxId)) },
  );
  const otherParam = fc.oneof(fc.constantFrom('base', 'fuzz', 'x'), oddString.map((s) => encodeURIComponent(s.replace(/[\ud800-\udfff]/g, '\ufffd'))), oddString);
  const route = fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(...t.restRoutes) },
    { weight: 1, arbitrary: fc.constantFrom({ method: 'GET', path: '/health' }, { method: 'GET', path: '/openapi.json' }, { method: 'GET', path: '/' }, { method: 'GET', path: '/nope' }) },
  );
  const body = fc.oneof(
    { weight: 20, arbitrary: jsonBodyOf(oddObject(SANDBOX_FIELDS).map(neverCreates)) },
    { weight: 3, arbitrary: jsonBodyOf(oddValue) },
    { weight: 1, arbitrary: hugeBody },
    { weight: 3, arbitrary: fc.constant(undefined) },
  );
  return fc
    .record({
      route,
      method: fc.option(oddMethod, { freq: 5 }),
      sandboxId: sandboxIdParam,
      otherParam,
      query: oddQuery(LIST_KEYS),
      auth: apiKeyHeader,
      contentType,
      body,
      idempotencyKey: fc.option(oddString.map(headerSafe), { freq: 8 }),
      origin: fc.option(fc.constantFrom('https://evil.example', 'null', '*'), { freq: 8 }),
      persistenceId: persistenceIdParam,
      persistenceBody: fc.oneof(
        { weight: 6, arbitrary: jsonBodyOf(oddObject(PERSISTENCE_FIELDS)) },
        { weight: 2, arbitrary: jsonBodyOf(oddValue) },
        { weight: 2, arbitrary: fc.constant(undefined) },
      ),
      mayAct: fc.integer({ min: 0, max: 3 }).map((n) => n === 0),
      pick: fc.nat(),
    })
    .map((r) => {
      const method = r.method ?? r.route.method;
      const persistenceRoute = PERSISTENCE_ROUTE.test(r.route.path);
      const sandboxId = persistenceRoute ? r.persistenceId : r.sandboxId;
      const path = r.route.path.replace('{sandboxID}', sandboxId).replace(/\{[A-Za-z]+\}/g, r.otherParam);
      let auth = r.auth;
      let bodyBytes = persistenceRoute ? r.persistenceBody : r.body;
      const withKey = auth.some(([, v]) => v === t.apiKey);
      const onLiveSandbox = path.includes(t.sandboxId) && !path.includes(`${t.sandboxId}x`) && withKey;
      const onPersistenceSandbox = path.includes(t.persistenceSandboxId) && !path.includes(`${t.persistenceSandboxId}x`) && withKey;
      if ((onLiveSandbox || onPersistenceSandbox) && method.toUpperCase() === 'DELETE') auth = [['X-API-Key', t.otherTeamApiKey]];
      if (onPersistenceSandbox && persistenceRoute && method.toUpperCase() === 'POST') bodyBytes = persistenceBody(path, bodyBytes, r.mayAct, r.pick);
      if (onLiveSandbox && /\/(timeout|refreshes)/.test(path) && bodyBytes) {
        // Keep what was generated, minus anything that could shorten the sandbox's life.
        try {
          const parsed = JSON.parse(bodyBytes.toString('utf8'));
          if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) bodyBytes = Buffer.from(JSON.stringify(neverShortens(parsed)));
        } catch {
          // not JSON: harmless as it is
        }
      }
      if (onLiveSandbox && /\/(timeout|refreshes)/.test(path) && !bodyBytes) bodyBytes = Buffer.from(JSON.stringify(neverShortens({})));
      const headers: Array<[string, string]> = [['Host', '127.0.0.1'], ...auth];
      if (r.contentType !== undefined && bodyBytes) headers.push(['Content-Type', r.contentType]);
      if (r.idempotencyKey !== null) headers.push(['Idempotency-Key', r.idempotencyKey]);
      if (r.origin !== null) headers.push(['Origin', r.origin]);
      return {
        surface: 'rest',
        kind: `${r.route.method} ${r.route.path}`,
        method,
        target: targetSafe(path + r.query),
        headers,
        body: bodyBytes,
        // A route Kiln does not implement yet answers 501, checked by its exact body. Which route the gateway matches
        // is its router's business (PATCH /templates/tags is PATCH /templates/{templateID}), so any method such a route
        // has qualifies; a HEAD answer has no body, so HEAD qualifies only on the generated route's own GET.
        ...((method.toUpperCase() === 'HEAD' ? t.notSupported.has(`GET ${r.route.path}`) : t.notSupportedMethods.has(method.toUpperCase()))
          ? { documented5xx: 'not-supported' as const }
          : {}),
      };
    });
}

// ---------------------------------------------------------------------------------------------------------------
// (b) the sandbox-traffic listener: routing headers, Host forms, tokens
// ---------------------------------------------------------------------------------------------------------------

export function trafficRequest(t: FuzzTargets): fc.Arbitrary<RawRequest> {
  const unknownId = fc.stringMatching(/^[a-z0-9]{20}$/);
  const badId = fc.oneof(fc.constantFrom('', ' ', t.sandboxId.toUpperCase(), `${t.sandboxId}-`, 'a'.repeat(65), 'a b', '..'), oddString.map(headerSafe));
  const portValue = fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(String(ENVD_PORT), String(t.userPort)) },
    { weight: 3, arbitrary: fc.constantFrom('0', '65536', '-1', '', ' ', 'abc', '1e3', '0x50', '49983.0', '049983', '99999999999999999999', ' 49983 ') },
    { weight: 1, arbitrary: oddString.map(headerSafe) },
  );
  const token = fc.oneof(
    { weight: 3, arbitrary: fc.constant<string | undefined>(t.envdAccessToken) },
    { weight: 5, arbitrary: fc.oneof(fc.constant(undefined), fc.constant(''), fc.constant(t.envdAccessToken.slice(1)), fc.constant(`${t.envdAccessToken} `), oddString.map(headerSafe)) },
  );
  type Routing = { headers: Array<[string, string]>; kind: string };
  const routing: fc.Arbitrary<Routing> = fc.oneof(
    // E2b-Sandbox-Id / -Port headers
    fc.record({ id: fc.oneof(fc.constant(t.sandboxId), badId), port: fc.option(portValue, { freq: 4 }) }).map(({ id, port }) => ({
      kind: 'id-headers',
      headers: [['Host', '127.0.0.1'], ['E2b-Sandbox-Id', id], ...(port === null ? [] : [['E2b-Sandbox-Port', port] as [string, string]])] as Array<[string, string]>,
    })),
    // a well-formed id that names no sandbox: E2B's proxy answers 502 "The sandbox was not found" (the SDK relies on it)
    unknownId.map((id) => ({
      kind: 'unknown-id',
      headers: [['Host', '127.0.0.1'], ['E2b-Sandbox-Id', id], ['E2b-Sandbox-Port', String(ENVD_PORT)]] as Array<[string, string]>,
    })),
    // {port}-{id}.{domain} Host forms
    fc.record({ id: fc.oneof(fc.constant(t.sandboxId), badId), port: portValue, suffix: fc.constantFrom(`.${t.domain}`, `.${t.domain.toUpperCase()}`, `.${t.domain}:80`, '.example.com', '', `.${t.domain}.`) }).map(({ id, port, suffix }) => ({
      kind: 'host-form',
      headers: [['Host', `${port}-${id}${suffix}`]] as Array<[string, string]>,
    })),
    // duplicated or conflicting routing headers, none at all
    fc.constantFrom<Routing>(
      { kind: 'no-routing', headers: [['Host', '127.0.0.1']] },
      { kind: 'no-host', headers: [] },
      { kind: 'dup-id', headers: [['Host', '127.0.0.1'], ['E2b-Sandbox-Id', t.sandboxId], ['E2b-Sandbox-Id', 'zzzz']] },
      { kind: 'port-only', headers: [['Host', '127.0.0.1'], ['E2b-Sandbox-Port', String(ENVD_PORT)]] },
      { kind: 'both-forms', headers: [['Host', `8000-zzzzzzzzzz.${t.domain}`], ['E2b-Sandbox-Id', t.sandboxId]] },
    ),
  );
  const path = fc.oneof(
    fc.constantFrom('/health', '/envs', '/files?path=/etc/hostname', '/process.Process/List', '/', '/metrics', '/init'),
    oddString.map((s) => `/${s}`),
  );
  return fc
    .record({ routing, token, trafficToken: fc.option(oddString.map(headerSafe), { freq: 6 }), method: oddMethod, path, query: oddQuery(['path', 'username', 'signature']), contentType, body: fc.option(jsonBodyOf(oddValue), { freq: 3 }) })
    .map((r) => {
      const headers = [...r.routing.headers];
      if (r.token !== undefined) headers.push(['X-Access-Token', r.token]);
      if (r.trafficToken !== null) headers.push(['E2b-Traffic-Access-Token', r.trafficToken]);
      // POST /init with the right token and a valid body would re-initialise the sandbox: it always carries a bad field.
      const body = r.path === '/init' ? Buffer.from('{"envVars":"fuzz-not-an-object"}') : (r.body ?? undefined);
      if (body && r.contentType !== undefined) headers.push(['Content-Type', r.contentType]);
      return {
        surface: 'traffic',
        kind: r.routing.kind,
        method: r.method,
        target: targetSafe(r.path + r.query),
        headers,
        body,
        // A request that names any sandbox but the live one may get E2B's 502 "The sandbox was not found".
        ...(namesLiveSandbox(headers, t) ? {} : { documented5xx: 'sandbox-not-found' as const }),
      };
    });
}

/** Whether the routing headers could address the live sandbox (then no answer at or above 500 is acceptable). */
function namesLiveSandbox(headers: Array<[string, string]>, t: FuzzTargets): boolean {
  return headers.some(([name, value]) => (name === 'E2b-Sandbox-Id' || name === 'Host') && value.toLowerCase().includes(t.sandboxId));
}

// ---------------------------------------------------------------------------------------------------------------
// (c) envd, reached through the traffic listener with the right token
// ---------------------------------------------------------------------------------------------------------------

/** A path anywhere (reads only). */
const anyPath = fc.oneof(fc.constantFrom('/', '/tmp', '/etc/passwd', '/proc/self/status', '/dev/zero', '/dev/stdin', '', '.', '~', '~root', '/nonexistent', `${SCRATCH_DIR}`), oddString, oddString.map((s) => `/tmp/${s}`));
/** A path for writes: always under the scratch directory, never climbing out of it. */
const scratchPath = fc.oneof(fc.constant(SCRATCH_DIR), oddString.map((s) => `${SCRATCH_DIR}/${s.replace(/\.\./g, '__')}`));
const pathValue = (paths: fc.Arbitrary<string>) => fc.oneof({ weight: 4, arbitrary: paths as fc.Arbitrary<unknown> }, { weight: 2, arbitrary: oddValue.filter((v) => typeof v !== 'string') });
/** A process selector that can never select a real process (pid out of range, or of the wrong type). */
const noProcess = fc.oneof(
  fc.record({ pid: fc.oneof(fc.integer({ min: NO_SUCH_PID_MIN, max: 2 ** 31 - 1 }), oddValue.filter((v) => typeof v !== 'number')) }, { requiredKeys: [] }),
  fc.record({ tag: oddString.map((s) => `fuzz-${s}`) }),
  oddValue,
);
const envMap = fc.oneof(fc.dictionary(oddString, oddString, { maxKeys: 3 }) as fc.Arbitrary<unknown>, oddValue);
/** Start requests run /bin/true or a program that does not exist, with odd arguments, envs, cwd and user. */
const processConfig = fc.record(
  {
    cmd: fc.oneof(fc.constant('/bin/true'), oddString.map((s) => `/nonexistent/${s}`), oddValue.filter((v) => typeof v !== 'string')),
    args: fc.oneof(fc.array(oddString, { maxLength: 4 }) as fc.Arbitrary<unknown>, oddValue),
    envs: envMap,
    cwd: fc.oneof(anyPath as fc.Arbitrary<unknown>, oddValue),
  },
  { requiredKeys: ['cmd'] },
);

const FS_METHODS: Record<string, fc.Arbitrary<unknown>> = {
  Stat: fc.record({ path: pathValue(anyPath) }, { requiredKeys: [] }),
  ListDir: fc.record({ path: pathValue(anyPath), depth: oddValue }, { requiredKeys: [] }),
  MakeDir: fc.record({ path: pathValue(scratchPath) }, { requiredKeys: [] }),
  Move: fc.record({ source: pathValue(scratchPath), destination: pathValue(scratchPath) }, { requiredKeys: [] }),
  Remove: fc.record({ path: pathValue(scratchPath.filter((p) => p !== SCRATCH_DIR)) }, { requiredKeys: [] }),
  CreateWatcher: fc.record({ path: pathValue(anyPath.filter((p) => p !== '' && p !== '.' && p !== '/' && p !== '/tmp')), recursive: oddValue }, { requiredKeys: [] }),
  GetWatcherEvents: fc.record({ watcherId: oddValue }, { requiredKeys: [] }),
  RemoveWatcher: fc.record({ watcherId: oddValue }, { requiredKeys: [] }),
  WatchDir: fc.record({ path: pathValue(anyPath.filter((p) => p !== '' && p !== '.' && p !== '/' && p !== '/tmp')), recursive: oddValue }, { requiredKeys: [] }),
};
const PROCESS_METHODS: Record<string, fc.Arbitrary<unknown>> = {
  List: fc.oneof(fc.constant({}), oddValue),
  Start: fc.record({ process: fc.oneof(processConfig as fc.Arbitrary<unknown>, oddValue), tag: oddValue, stdin: oddValue, pty: oddValue }, { requiredKeys: [] }),
  Connect: fc.record({ process: noProcess }, { requiredKeys: [] }),
  Update: fc.record({ process: noProcess, pty: oddValue }, { requiredKeys: [] }),
  SendInput: fc.record({ process: noProcess, input: oddValue }, { requiredKeys: [] }),
  SendSignal: fc.record({ process: noProcess, signal: oddValue }, { requiredKeys: [] }),
  CloseStdin: fc.record({ process: noProcess }, { requiredKeys: [] }),
  StreamInput: fc.record({ start: fc.record({ process: noProcess }), data: oddValue }, { requiredKeys: [] }),
};
const STREAMING = new Set(['WatchDir', 'Start', 'Connect', 'StreamInput']);

/** Connect's envelope: flags byte, big-endian length, message; generated broken in every field. */
const envelope = (message: fc.Arbitrary<Buffer>) =>
  fc.oneof(
    message.map((m) => frame(0, m.length, m)),
    fc.tuple(fc.integer({ min: 0, max: 255 }), message).map(([flags, m]) => frame(flags, m.length, m)),
    fc.tuple(fc.integer({ min: 0, max: 2 ** 32 - 1 }), message).map(([length, m]) => frame(0, length, m)),
    fc.tuple(fc.integer({ min: 0, max: 4 }), message).map(([cut, m]) => frame(0, m.length, m).subarray(0, cut)),
    fc.tuple(message, message).map(([a, b]) => Buffer.concat([frame(0, a.length, a), frame(2, b.length, b)])),
    fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
  );

function frame(flags: number, length: number, message: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(flags, 0);
  head.writeUInt32BE(length >>> 0, 1);
  return Buffer.concat([head, message]);
}

/** Users the Connect basic-auth header names: real, unknown, malformed. Writes never run as root. */
const rpcUser = fc.oneof(fc.constantFrom<string | undefined>(undefined, 'user', 'nobody', 'fuzz-no-such-user', ''), oddString);

function basicAuth(user: string): string {
  return `Basic ${Buffer.from(`${user}:`).toString('base64')}`;
}

export function envdRequest(t: FuzzTargets): fc.Arbitrary<RawRequest> {
  const routing: Array<[string, string]> = [
    ['Host', '127.0.0.1'],
    ['E2b-Sandbox-Id', t.sandboxId],
    ['E2b-Sandbox-Port', String(ENVD_PORT)],
    ['X-Access-Token', t.envdAccessToken],
  ];
  const rpcCall = fc
    .oneof(
      ...Object.entries(FS_METHODS).map(([name, message]) => fc.record({ service: fc.constant('filesystem.Filesystem'), name: fc.constant(name), message })),
      ...Object.entries(PROCESS_METHODS).map(([name, message]) => fc.record({ service: fc.constant('process.Process'), name: fc.constant(name), message })),
      fc.record({ service: fc.constantFrom('process.Process', 'filesystem.Filesystem', 'nope.Nope'), name: oddString.map((s) => encodeURIComponent(s.replace(/[\ud800-\udfff]/g, '?'))), message: oddValue }),
    )
    .chain((call) => {
      const json = jsonBodyOf(fc.constant(call.message));
      const streaming = STREAMING.has(call.name);
      const body = streaming
        ? fc.oneof({ weight: 3, arbitrary: envelope(json) }, { weight: 1, arbitrary: json })
        : fc.oneof({ weight: 3, arbitrary: json }, { weight: 1, arbitrary: envelope(json) }, { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)) });
      const type = streaming
        ? fc.constantFrom<string | undefined>('application/connect+json', 'application/connect+json', 'application/connect+proto', 'application/json', 'application/grpc', undefined, 'text/plain')
        : fc.constantFrom<string | undefined>('application/json', 'application/json', 'application/proto', 'application/connect+json', 'application/grpc-web+json', undefined, 'text/plain', 'application/json; charset=latin1');
      return fc.record({
        call: fc.constant(call),
        body,
        type,
        user: rpcUser,
        method: fc.constantFrom('POST', 'POST', 'POST', 'POST', 'GET', 'PUT', 'OPTIONS'),
        protocolVersion: fc.constantFrom<string | undefined>('1', undefined, '2', 'x'),
        timeout: fc.constantFrom<string | undefined>(undefined, undefined, '0', '-1', 'abc', '99999999999999', '5000'),
        encoding: fc.constantFrom<string | undefined>(undefined, undefined, 'gzip', 'br', 'identity', 'nope'),
        getQuery: oddQuery(['message', 'encoding', 'base64', 'compression', 'connect']),
      });
    })
    .map((r): RawRequest => {
      const isWrite = ['MakeDir', 'Move', 'Remove', 'Start'].includes(r.call.name);
      const user = isWrite && r.user === 'root' ? 'user' : r.user;
      const headers: Array<[string, string]> = [...routing];
      if (r.type !== undefined) headers.push(['Content-Type', r.type]);
      if (user !== undefined) headers.push(['Authorization', headerSafe(basicAuth(user))]);
      if (r.protocolVersion !== undefined) headers.push(['Connect-Protocol-Version', r.protocolVersion]);
      if (r.timeout !== undefined) headers.push(['Connect-Timeout-Ms', r.timeout]);
      if (r.encoding !== undefined) headers.push([STREAMING.has(r.call.name) ? 'Connect-Content-Encoding' : 'Content-Encoding', r.encoding]);
      const get = r.method === 'GET';
      return {
        surface: 'envd',
        kind: `rpc ${r.call.service}/${r.call.name}`,
        method: r.method,
        target: targetSafe(`/${r.call.service}/${r.call.name}${get ? r.getQuery : ''}`),
        headers,
        body: get ? undefined : r.body,
      };
    });

  const filesUser = fc.oneof(fc.constantFrom('user', 'root', 'nobody', 'fuzz-no-such-user', '', '0', '-1'), oddString);
  const filesGet = fc.record({ path: anyPath, user: fc.option(filesUser), extra: oddQuery(['signature', 'signature_expiration', 'username', 'path']) }).map(({ path, user, extra }): RawRequest => {
    const query = new URLSearchParams();
    query.set('path', path.replace(/[\ud800-\udfff]/g, '?'));
    if (user !== null) query.set('username', user.replace(/[\ud800-\udfff]/g, '?'));
    return { surface: 'envd', kind: 'GET /files', method: 'GET', target: targetSafe(`/files?${query}${extra.replace('?', '&')}`), headers: [...routing, ['Accept-Encoding', 'gzip']] };
  });
  const filesPost = fc
    .record({
      path: fc.option(scratchPath),
      user: fc.option(fc.oneof(fc.constantFrom('user', 'nobody', 'fuzz-no-such-user', ''), oddString.filter((s) => s !== 'root'))),
      boundary: fc.constantFrom('fuzzb', '', 'a'.repeat(100), 'x y'),
      declaredBoundary: fc.constantFrom('fuzzb', undefined, '', 'other'),
      parts: fc.array(
        fc.record({
          name: fc.constantFrom('file', 'file', 'other', '', '"'),
          filename: fc.option(oddString.map((s) => s.replace(/\.\./g, '__').replace(/[/\\]/g, '_'))),
          content: fc.oneof(fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b)), oddString.map((s) => Buffer.from(s.slice(0, 4096)))),
          headers: fc.option(oddString.map(headerSafe)),
        }),
        { maxLength: 4 },
      ),
      truncate: fc.boolean(),
      contentType: fc.constantFrom('multipart/form-data', 'multipart/form-data', 'application/octet-stream', 'application/json', undefined, 'multipart/mixed'),
      metadataHeader: fc.option(fc.tuple(fc.constantFrom('X-Kiln-File-Mode', 'X-Kiln-File-Mtime', 'X-File-Mode'), oddString.map(headerSafe))),
    })
    .map((r): RawRequest => {
      const query = new URLSearchParams();
      if (r.path !== null) query.set('path', r.path.replace(/[\ud800-\udfff]/g, '?'));
      if (r.user !== null) query.set('username', r.user.replace(/[\ud800-\udfff]/g, '?'));
      const pieces: Buffer[] = [];
      for (const part of r.parts) {
        const disposition = `form-data; name="${part.name}"${part.filename !== null ? `; filename="${part.filename.replace(/[\r\n"]/g, '_')}"` : ''}`;
        pieces.push(Buffer.from(`--${r.boundary}\r\nContent-Disposition: ${disposition}\r\n${part.headers !== null ? `X-Odd: ${part.headers}\r\n` : ''}\r\n`), part.content, Buffer.from('\r\n'));
      }
      if (!r.truncate) pieces.push(Buffer.from(`--${r.boundary}--\r\n`));
      const headers: Array<[string, string]> = [...routing];
      if (r.contentType !== undefined) headers.push(['Content-Type', r.contentType.startsWith('multipart') && r.declaredBoundary !== undefined ? `${r.contentType}; boundary=${r.declaredBoundary}` : r.contentType]);
      if (r.metadataHeader !== null) headers.push(r.metadataHeader);
      return { surface: 'envd', kind: 'POST /files', method: 'POST', target: targetSafe(`/files?${query}`), headers, body: Buffer.concat(pieces) };
    });
  // /init always carries one field that fails validation: a valid body would re-initialise the live sandbox.
  const poison = fc.constantFrom<Record<string, unknown>>({ envVars: 'fuzz' }, { defaultUser: 5 }, { timestamp: 'not-a-date' }, { nameservers: 'fuzz' }, { entropySeed: '!!' }, { accessToken: 7 });
  const init = fc
    .tuple(oddObject(['accessToken', 'envVars', 'defaultUser', 'defaultWorkdir', 'timestamp', 'entropySeed', 'nameservers']), poison, fc.boolean(), fc.constantFrom('valid', 'absent', 'wrong'))
    .map(([fields, bad, asObject, tokenKind]): RawRequest => {
      const { accessToken: _ignored, ...rest } = fields;
      const body = asObject ? { ...rest, ...bad } : [rest, bad];
      const headers = routing.filter(([name]) => name !== 'X-Access-Token');
      if (tokenKind === 'valid') headers.push(['X-Access-Token', t.envdAccessToken]);
      if (tokenKind === 'wrong') headers.push(['X-Access-Token', 'fuzz-wrong-token']);
      headers.push(['Content-Type', 'application/json']);
      return { surface: 'envd', kind: 'POST /init', method: 'POST', target: '/init', headers, body: Buffer.from(JSON.stringify(body)) };
    });
  const misc = fc
    .record({ path: fc.constantFrom('/health', '/envs', '/metrics', '/init', '/files', '/', '/process.Process/', '/filesystem.Filesystem'), method: oddMethod, query: oddQuery(['path', 'username']), body: fc.option(jsonBodyOf(oddValue), { freq: 3 }) })
    .map(({ path, method, query, body }): RawRequest => ({
      surface: 'envd',
      kind: `misc ${path}`,
      method: path === '/init' && method.toUpperCase() === 'POST' ? 'PUT' : method,
      target: targetSafe(path + query),
      headers: [...routing, ['Content-Type', 'application/json']],
      body: path === '/files' && method.toUpperCase() === 'POST' ? undefined : (body ?? undefined),
    }));
  return fc.oneof({ weight: 10, arbitrary: rpcCall }, { weight: 3, arbitrary: filesGet }, { weight: 3, arbitrary: filesPost }, { weight: 1, arbitrary: init }, { weight: 2, arbitrary: misc });
}
