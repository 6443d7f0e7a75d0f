import 'reflect-metadata';
import { SeededTeam, TestStack } from './support/test-stack';

jest.setTimeout(60_000);

let stack: TestStack;
let team: SeededTeam;
let sandboxId: string;

interface BadRequest {
  name: string;
  method: string;
  path: string;
  body?: string | Buffer;
  contentType?: string | null;
  headers?: Record<string, string>;
  status: number;
  /** Every field the message must name. */
  names?: string[];
}

const SANDBOX = '{sandbox}';
const json = (value: unknown) => JSON.stringify(value);
const longString = (n: number) => 'x'.repeat(n);

const cases: BadRequest[] = [
  // Malformed bodies
  { name: 'truncated JSON', method: 'POST', path: '/sandboxes', body: '{"templateID": "base"', status: 400 },
  { name: 'not JSON at all', method: 'POST', path: '/sandboxes', body: 'templateID=base', status: 400 },
  { name: 'trailing garbage', method: 'POST', path: '/sandboxes', body: '{"templateID":"base"} x', status: 400 },
  { name: 'empty body with JSON content type', method: 'POST', path: '/sandboxes', body: '', status: 400 },
  { name: 'JSON array body', method: 'POST', path: '/sandboxes', body: '[]', status: 400 },
  { name: 'JSON string body', method: 'POST', path: '/sandboxes', body: '"base"', status: 400 },
  { name: 'JSON number body', method: 'POST', path: '/sandboxes', body: '42', status: 400 },
  { name: 'JSON null body', method: 'POST', path: '/sandboxes', body: 'null', status: 400 },
  { name: 'no body for create', method: 'POST', path: '/sandboxes', contentType: null, status: 400 },
  { name: 'body over the limit', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', envVars: { BIG: longString(1_100_000) } }), status: 413 },
  { name: 'wrong content type', method: 'POST', path: '/sandboxes', body: 'templateID: base', contentType: 'text/yaml', status: 415 },
  { name: 'form-encoded body', method: 'POST', path: '/sandboxes', body: 'templateID=base', contentType: 'application/x-www-form-urlencoded', status: 415 },
  { name: 'binary body', method: 'POST', path: '/sandboxes', body: Buffer.from([0xff, 0xfe, 0x00, 0x01]), status: 400 },
  { name: 'prototype pollution attempt', method: 'POST', path: '/sandboxes', body: '{"__proto__":{"admin":true},"templateID":"base"}', status: 400 },
  // Wrong types and values in NewSandbox
  { name: 'missing templateID', method: 'POST', path: '/sandboxes', body: json({ timeout: 30 }), status: 400, names: ['templateID'] },
  { name: 'numeric templateID', method: 'POST', path: '/sandboxes', body: json({ templateID: 42 }), status: 400, names: ['templateID'] },
  { name: 'empty templateID', method: 'POST', path: '/sandboxes', body: json({ templateID: '' }), status: 400, names: ['templateID'] },
  { name: 'templateID with spaces', method: 'POST', path: '/sandboxes', body: json({ templateID: 'my template' }), status: 400, names: ['templateID'] },
  { name: 'templateID path traversal', method: 'POST', path: '/sandboxes', body: json({ templateID: '../etc/passwd' }), status: 400, names: ['templateID'] },
  { name: 'templateID too long', method: 'POST', path: '/sandboxes', body: json({ templateID: longString(200) }), status: 400, names: ['templateID'] },
  { name: 'string timeout', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', timeout: '30' }), status: 400, names: ['timeout'] },
  { name: 'negative timeout', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', timeout: -1 }), status: 400, names: ['timeout'] },
  { name: 'fractional timeout', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', timeout: 1.5 }), status: 400, names: ['timeout'] },
  { name: 'timeout over 24h', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', timeout: 86_401 }), status: 400, names: ['timeout'] },
  { name: 'string autoPause', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', autoPause: 'yes' }), status: 400, names: ['autoPause'] },
  { name: 'numeric secure', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', secure: 1 }), status: 400, names: ['secure'] },
  { name: 'string allow_internet_access', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', allow_internet_access: 'false' }), status: 400, names: ['allow_internet_access'] },
  { name: 'metadata as array', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', metadata: ['a'] }), status: 400, names: ['metadata'] },
  { name: 'metadata with a number value', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', metadata: { a: 1 } }), status: 400, names: ['metadata'] },
  { name: 'metadata with too many keys', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', metadata: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])) }), status: 400, names: ['metadata'] },
  { name: 'envVars as string', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', envVars: 'A=1' }), status: 400, names: ['envVars'] },
  { name: 'envVars with nested object', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base', envVars: { A: { B: 'c' } } }), status: 400, names: ['envVars'] },
  { name: 'several bad fields at once', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 7, timeout: 'x', autoPause: 3 }), status: 400, names: ['templateID', 'timeout', 'autoPause'] },
  // Egress rules: each bad entry is named; options Kiln does not implement are refused, never ignored
  { name: 'malformed CIDR in denyOut', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { denyOut: ['10.0.0.0/33'] } }), status: 400, names: ['denyOut', '10.0.0.0/33'] },
  { name: 'bad IPv4 in allowOut', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { allowOut: ['1.2.3.4', '300.1.1.1'] } }), status: 400, names: ['allowOut', '300.1.1.1'] },
  { name: 'domain in denyOut', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { denyOut: ['example.com'] } }), status: 400, names: ['denyOut', 'example.com'] },
  { name: 'bare * domain rule', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { allowOut: ['*'] } }), status: 400, names: ['allowOut', '"*"'] },
  { name: 'malformed domain rule', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { allowOut: ['exa mple.com'] } }), status: 400, names: ['allowOut', 'exa mple.com'] },
  { name: 'IPv6 egress rule', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { denyOut: ['::/0'] } }), status: 400, names: ['denyOut', 'IPv6'] },
  { name: 'too many egress rules', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { denyOut: Array.from({ length: 1001 }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`) } }), status: 400, names: ['denyOut'] },
  { name: 'allowOut not a list', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { allowOut: '1.2.3.4' } }), status: 400, names: ['allowOut'] },
  { name: 'allowPublicTraffic as string', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { allowPublicTraffic: 'no' } }), status: 400, names: ['allowPublicTraffic'] },
  { name: 'maskRequestHost with a path', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { maskRequestHost: 'evil.com/x' } }), status: 400, names: ['maskRequestHost'] },
  { name: 'egressProxy (unsupported, never ignored)', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { egressProxy: { address: 'socks5://127.0.0.1:1080' } } }), status: 400, names: ['network.egressProxy'] },
  { name: 'per-domain rules (unsupported, never ignored)', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { rules: { 'a.com': [{ transform: { headers: { x: 'y' } } }] } } }), status: 400, names: ['network.rules'] },
  { name: 'httpsPorts (unsupported, never ignored)', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { httpsPorts: [3000] } }), status: 400, names: ['network.httpsPorts'] },
  { name: 'unknown network field', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', network: { blockEverything: true } }), status: 400, names: ['network.blockEverything'] },
  { name: 'network update with a bad CIDR', method: 'PUT', path: `/sandboxes/${SANDBOX}/network`, body: json({ denyOut: ['1.2.3.0/40'] }), status: 400, names: ['denyOut', '1.2.3.0/40'] },
  { name: 'network update with egressProxy', method: 'PUT', path: `/sandboxes/${SANDBOX}/network`, body: json({ egressProxy: { address: 'x:1' } }), status: 400, names: ['egressProxy'] },
  { name: 'network update with string allow_internet_access', method: 'PUT', path: `/sandboxes/${SANDBOX}/network`, body: json({ allow_internet_access: 'false' }), status: 400, names: ['allow_internet_access'] },
  { name: 'network update of an unknown sandbox', method: 'PUT', path: '/sandboxes/doesnotexist0/network', body: json({ denyOut: ['0.0.0.0/0'] }), status: 404 },
  { name: 'volume mounts (unsupported)', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', volumeMounts: [{ name: 'v', path: '/data' }] }), status: 400, names: ['volumeMounts'] },
  { name: 'bad Idempotency-Key', method: 'POST', path: '/sandboxes', body: json({ templateID: 'base' }), headers: { 'idempotency-key': 'has spaces in it' }, status: 400, names: ['Idempotency-Key'] },
  // Timeout / refresh / connect / resume bodies
  { name: 'timeout body missing timeout', method: 'POST', path: `/sandboxes/${SANDBOX}/timeout`, body: json({}), status: 400, names: ['timeout'] },
  { name: 'timeout as string', method: 'POST', path: `/sandboxes/${SANDBOX}/timeout`, body: json({ timeout: 'long' }), status: 400, names: ['timeout'] },
  { name: 'timeout body absent', method: 'POST', path: `/sandboxes/${SANDBOX}/timeout`, contentType: null, status: 400 },
  { name: 'refresh duration too large', method: 'POST', path: `/sandboxes/${SANDBOX}/refreshes`, body: json({ duration: 100_000 }), status: 400, names: ['duration'] },
  { name: 'refresh duration negative', method: 'POST', path: `/sandboxes/${SANDBOX}/refreshes`, body: json({ duration: -5 }), status: 400, names: ['duration'] },
  { name: 'connect timeout as bool', method: 'POST', path: `/sandboxes/${SANDBOX}/connect`, body: json({ timeout: true }), status: 400, names: ['timeout'] },
  { name: 'v2 connect timeout negative', method: 'POST', path: `/v2/sandboxes/${SANDBOX}/connect`, body: json({ timeout: -10 }), status: 400, names: ['timeout'] },
  { name: 'resume autoPause as string', method: 'POST', path: `/sandboxes/${SANDBOX}/resume`, body: json({ autoPause: 'true' }), status: 400, names: ['autoPause'] },
  { name: 'pause memory as string', method: 'POST', path: `/sandboxes/${SANDBOX}/pause`, body: json({ memory: 'no' }), status: 400, names: ['memory'] },
  // Bad ids
  { name: 'uppercase sandbox id', method: 'GET', path: '/sandboxes/ABCDEF', status: 400, names: ['sandboxID'] },
  { name: 'sandbox id with dash', method: 'GET', path: '/sandboxes/abc-def', status: 400, names: ['sandboxID'] },
  { name: 'sandbox id too long', method: 'GET', path: `/sandboxes/${'a'.repeat(65)}`, status: 400, names: ['sandboxID'] },
  { name: 'encoded traversal in id', method: 'DELETE', path: '/sandboxes/..%2F..%2Fetc', status: 400, names: ['sandboxID'] },
  { name: 'broken percent-encoding in id', method: 'GET', path: '/sandboxes/%E0%A4%A', status: 400 },
  { name: 'unknown but well-formed sandbox', method: 'GET', path: '/sandboxes/doesnotexist0', status: 404 },
  { name: 'unknown sandbox metrics', method: 'GET', path: '/sandboxes/doesnotexist0/metrics', status: 404 },
  { name: 'unknown sandbox kill', method: 'DELETE', path: '/sandboxes/doesnotexist0', status: 404 },
  { name: 'bad template alias', method: 'GET', path: '/templates/aliases/has%20space', status: 400, names: ['alias'] },
  // Bad query parameters
  { name: 'limit not a number', method: 'GET', path: '/v2/sandboxes?limit=ten', status: 400, names: ['limit'] },
  { name: 'limit zero', method: 'GET', path: '/v2/sandboxes?limit=0', status: 400, names: ['limit'] },
  { name: 'limit too large', method: 'GET', path: '/v2/sandboxes?limit=100000', status: 400, names: ['limit'] },
  { name: 'limit repeated', method: 'GET', path: '/v2/sandboxes?limit=1&limit=2', status: 400, names: ['limit'] },
  { name: 'unknown state', method: 'GET', path: '/v2/sandboxes?state=exploded', status: 400, names: ['state'] },
  { name: 'one bad state among good', method: 'GET', path: '/v2/sandboxes?state=running,zombie', status: 400, names: ['state'] },
  { name: 'forged nextToken', method: 'GET', path: '/v2/sandboxes?nextToken=not-a-real-token', status: 400, names: ['nextToken'] },
  { name: 'metadata without a key', method: 'GET', path: `/v2/sandboxes?metadata=${encodeURIComponent('=value')}`, status: 400, names: ['metadata'] },
  { name: 'metadata with bad inner encoding', method: 'GET', path: `/v2/sandboxes?metadata=${encodeURIComponent('a=%E0%A4%A')}`, status: 400, names: ['metadata'] },
  { name: 'template filter with a tag', method: 'GET', path: '/v2/sandboxes?template=base:v1', status: 400, names: ['template'] },
  { name: 'template filter that is no template name', method: 'GET', path: '/v2/sandboxes?template=a%20b', status: 400, names: ['template'] },
  { name: 'bad order', method: 'GET', path: '/v2/sandboxes?order=sideways', status: 400, names: ['order'] },
  { name: 'order repeated', method: 'GET', path: '/v2/sandboxes?order=asc&order=desc', status: 400, names: ['order'] },
  { name: 'startedAfter not a timestamp', method: 'GET', path: '/v2/sandboxes?startedAfter=yesterday', status: 400, names: ['startedAfter'] },
  { name: 'startedAfter as Unix seconds', method: 'GET', path: '/v2/sandboxes?startedAfter=1714560000', status: 400, names: ['startedAfter'] },
  { name: 'startedAfter with an unencoded + offset', method: 'GET', path: '/v2/sandboxes?startedAfter=2026-01-01T00:00:00+01:00', status: 400, names: ['startedAfter'] },
  { name: 'startedAfter on a day that does not exist', method: 'GET', path: '/v2/sandboxes?startedAfter=2026-02-30T00:00:00Z', status: 400, names: ['startedAfter'] },
  { name: "limit over E2B's maximum of 100", method: 'GET', path: '/v2/sandboxes?limit=101', status: 400, names: ['limit'] },
  { name: 'metrics start not a number', method: 'GET', path: `/sandboxes/${SANDBOX}/metrics?start=yesterday`, status: 400, names: ['start'] },
  { name: 'metrics end negative', method: 'GET', path: `/sandboxes/${SANDBOX}/metrics?end=-1`, status: 400, names: ['end'] },
  { name: 'logs limit over 1000', method: 'GET', path: `/v2/sandboxes/${SANDBOX}/logs?limit=1001`, status: 400, names: ['limit'] },
  { name: 'logs bad direction', method: 'GET', path: `/v2/sandboxes/${SANDBOX}/logs?direction=up`, status: 400, names: ['direction'] },
  { name: 'logs bad level', method: 'GET', path: `/v2/sandboxes/${SANDBOX}/logs?level=loud`, status: 400, names: ['level'] },
  { name: 'logs cursor not a number', method: 'GET', path: `/v2/sandboxes/${SANDBOX}/logs?cursor=abc`, status: 400, names: ['cursor'] },
  { name: 'templates for another team', method: 'GET', path: '/templates?teamID=00000000-0000-0000-0000-000000000000', status: 404 },
  // Unknown routes and wrong methods
  { name: 'unknown route', method: 'GET', path: '/nope', status: 404 },
  { name: 'unknown nested route', method: 'GET', path: '/sandboxes/abc/unknown', status: 404 },
  { name: 'PUT on sandboxes', method: 'PUT', path: '/sandboxes', body: json({}), status: 404 },
  { name: 'PATCH on a sandbox', method: 'PATCH', path: `/sandboxes/${SANDBOX}`, body: json({}), status: 404 },
  { name: 'DELETE on the collection', method: 'DELETE', path: '/sandboxes', status: 404 },
  { name: 'GET on timeout', method: 'GET', path: `/sandboxes/${SANDBOX}/timeout`, status: 404 },
  { name: 'template build (deprecated POST /templates): not supported, never a 404', method: 'POST', path: '/templates', body: json({}), status: 501, names: ['POST /templates'] },
  { name: 'fork count 0', method: 'POST', path: `/sandboxes/${SANDBOX}/fork`, body: json({ count: 0 }), status: 400, names: ['count'] },
  { name: 'fork count over 100', method: 'POST', path: `/sandboxes/${SANDBOX}/fork`, body: json({ count: 101 }), status: 400, names: ['count'] },
  { name: 'snapshot name with spaces', method: 'POST', path: `/sandboxes/${SANDBOX}/snapshots`, body: json({ name: 'my snap' }), status: 400, names: ['name'] },
  { name: 'connect from disk only (memory: false)', method: 'POST', path: `/sandboxes/${SANDBOX}/connect`, body: json({ timeout: 10, memory: false }), status: 400, names: ['memory'] },
  { name: 'pause of an unknown sandbox', method: 'POST', path: '/sandboxes/doesnotexist0/pause', body: json({}), status: 404 },
  // Found by tools/fuzz: class-transformer recursed through the nesting and overflowed the stack (500).
  { name: 'body nested 5000 levels deep', method: 'POST', path: '/sandboxes/doesnotexist0/pause', body: '{"a":'.repeat(5000) + '1' + '}'.repeat(5000), status: 400, names: ['nests deeper'] },
  { name: 'body nested 5000 levels deep (create)', method: 'POST', path: '/sandboxes', body: `{"templateID":"base","metadata":${'['.repeat(5000)}${']'.repeat(5000)}}`, status: 400, names: ['nests deeper'] },
  { name: 'autoResume with a disk-only pause at timeout', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', autoPause: true, autoPauseMemory: false, autoResume: { enabled: true } }), status: 400, names: ['autoResume'] },
  { name: 'autoResume.enabled as string', method: 'POST', path: '/v2/sandboxes', body: json({ templateID: 'base', autoResume: { enabled: 'yes' } }), status: 400, names: ['autoResume'] },
  { name: 'template builds with a bad limit', method: 'GET', path: '/templates/base?limit=0', status: 400, names: ['limit'] },
  { name: 'v3 route', method: 'GET', path: '/v3/sandboxes', status: 404 },
  // Unauthenticated variants of valid requests
  { name: 'empty API key', method: 'GET', path: '/v2/sandboxes', headers: { 'x-api-key': '' }, status: 401 },
  { name: 'API key with wrong prefix', method: 'GET', path: '/v2/sandboxes', headers: { 'x-api-key': 'sk_' + 'a'.repeat(40) }, status: 401 },
  { name: 'Bearer without a token', method: 'GET', path: '/v2/sandboxes', headers: { authorization: 'Bearer ' }, status: 401 },
];

beforeAll(async () => {
  stack = await TestStack.start();
  team = await stack.seedTeam();
  sandboxId = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: 'http://127.0.0.1:1' });
});

afterAll(async () => {
  await stack?.stop();
});

it('has at least 50 bad requests in the table', () => {
  expect(cases.length).toBeGreaterThanOrEqual(50);
});

describe.each(cases)('$name: $method $path', (bad) => {
  it(`answers ${bad.status} with {code, message}`, async () => {
    // Cases that bring their own credentials get no valid key added.
    const ownCredentials = bad.headers && ('authorization' in bad.headers || 'x-api-key' in bad.headers);
    const headers: Record<string, string> = { ...(ownCredentials ? {} : { 'x-api-key': team.apiKey }), ...(bad.headers ?? {}) };
    if (bad.body !== undefined && bad.contentType !== null) headers['content-type'] = bad.contentType ?? 'application/json';
    if (bad.body === undefined && bad.contentType === undefined && bad.method === 'POST') headers['content-type'] = 'application/json';
    const response = await fetch(stack.gateway.apiUrl + bad.path.replace(SANDBOX, sandboxId), { method: bad.method, headers, body: bad.body });
    const text = await response.text();
    let body: { code?: unknown; message?: unknown; error_code?: unknown } | undefined;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    expect({ status: response.status, body: body ?? text }).toEqual({
      status: bad.status,
      body: { code: bad.status, message: expect.any(String), error_code: expect.any(String) },
    });
    for (const field of bad.names ?? []) expect(body?.message).toContain(field);
  });
});

it('answers CONNECT on the REST port with 405 {code, message} instead of dropping the connection (found by tools/fuzz)', async () => {
  const { connect } = await import('node:net');
  const answer = await new Promise<string>((resolve, reject) => {
    const socket = connect(Number(new URL(stack.gateway.apiUrl).port), '127.0.0.1', () =>
      socket.write(`CONNECT /sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: ${team.apiKey}\r\n\r\n`),
    );
    let text = '';
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.on('close', () => resolve(text));
    socket.on('error', reject);
  });
  expect(answer).toMatch(/^HTTP\/1\.1 405 /);
  expect(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4))).toMatchObject({ code: 405, message: expect.any(String) });
});
