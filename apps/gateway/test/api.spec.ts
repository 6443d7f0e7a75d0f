import 'reflect-metadata';
import { createServer, Server } from 'node:http';
import { SandboxState } from '@kiln/contracts';
import { SeededTeam, TestStack } from './support/test-stack';

jest.setTimeout(60_000);

interface Answer {
  status: number;
  headers: Headers;
  // Response JSON of many shapes; each test asserts the one it expects.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

let stack: TestStack;
let teamA: SeededTeam;
let teamB: SeededTeam;
/** Stands in for a host agent's proxy so seeded sandboxes have a reachable route (serves envd-style /metrics). */
let guestStandIn: Server;
let guestUrl: string;

async function call(method: string, path: string, options: { key?: string | null; body?: unknown; headers?: Record<string, string> } = {}): Promise<Answer> {
  const headers: Record<string, string> = { ...(options.headers ?? {}) };
  if (options.key !== null) headers['x-api-key'] = options.key ?? teamA.apiKey;
  let body: string | undefined;
  if (options.body !== undefined) {
    headers['content-type'] ??= 'application/json';
    body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
  }
  const response = await fetch(stack.gateway.apiUrl + path, { method, headers, body });
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    // not JSON; leave as text so the assertion shows it
  }
  return { status: response.status, headers: response.headers, body: parsed };
}

beforeAll(async () => {
  guestStandIn = createServer((req, res) => {
    if (req.url === '/metrics') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ ts: Math.floor(Date.now() / 1000), cpu_count: 2, cpu_used_pct: 12.5, mem_total: 512e6, mem_used: 100e6, mem_cache: 10e6, disk_used: 1e9, disk_total: 2e9, seenSandbox: req.headers['e2b-sandbox-id'] }));
      return;
    }
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((resolve) => guestStandIn.listen(0, '127.0.0.1', resolve));
  const address = guestStandIn.address();
  guestUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  stack = await TestStack.start();
  teamA = await stack.seedTeam();
  teamB = await stack.seedTeam();
});

afterAll(async () => {
  await stack?.stop();
  await new Promise((resolve) => guestStandIn?.close(resolve));
});

describe('authentication', () => {
  it('rejects a missing key with 401 in the error shape', async () => {
    const answer = await call('GET', '/v2/sandboxes', { key: null });
    expect(answer.status).toBe(401);
    expect(answer.body).toEqual({ code: 401, message: expect.stringContaining('API key'), error_code: 'unauthenticated' });
  });

  it('rejects a well-formed but unknown key with 401', async () => {
    const answer = await call('GET', '/v2/sandboxes', { key: 'e2b_' + '0'.repeat(40) });
    expect(answer.status).toBe(401);
    expect(answer.body).toMatchObject({ code: 401, message: 'invalid API key' });
  });

  it('rejects a malformed key with 401 without a lookup', async () => {
    const answer = await call('GET', '/templates', { key: 'not-a-key' });
    expect(answer.status).toBe(401);
  });

  it('rejects a revoked key', async () => {
    const team = await stack.seedTeam();
    const key = await stack.apiKeys.create(team.teamId, 'to-revoke');
    await stack.apiKeys.revoke(key.id);
    expect((await call('GET', '/templates', { key: key.key })).status).toBe(401);
  });

  it('accepts Authorization: Bearer with an API key', async () => {
    const answer = await call('GET', '/templates', { key: null, headers: { authorization: `Bearer ${teamA.apiKey}` } });
    expect(answer.status).toBe(200);
  });

  it('serves /health and /openapi.json without a key', async () => {
    expect((await call('GET', '/openapi.json', { key: null })).status).toBe(200);
    const health = await call('GET', '/health', { key: null });
    expect(health.status).toBe(200);
    expect(health.body.dependencies).toEqual({
      postgres: expect.objectContaining({ status: 'up' }),
      nats: expect.objectContaining({ status: 'up' }),
      redis: expect.objectContaining({ status: 'up' }),
      scheduler: expect.objectContaining({ status: 'up' }),
    });
  });
});

describe('sandboxes through the real scheduler', () => {
  let sandboxId: string;
  let pausedId: string;

  beforeAll(async () => {
    sandboxId = await stack.seedSandbox({ teamId: teamA.teamId, proxyUrl: guestUrl, metadata: { app: 'web', owner: 'a b&c' } });
    pausedId = await stack.seedSandbox({ teamId: teamA.teamId, proxyUrl: guestUrl, state: SandboxState.Paused });
  });

  it('gets a sandbox as E2B SandboxDetail', async () => {
    const answer = await call('GET', `/sandboxes/${sandboxId}`);
    expect(answer.status).toBe(200);
    expect(answer.body).toMatchObject({
      sandboxID: sandboxId,
      templateID: 'base',
      alias: 'base',
      state: 'running',
      cpuCount: 1,
      memoryMB: 256,
      diskSizeMB: 1024,
      metadata: { app: 'web', owner: 'a b&c' },
      domain: 'kiln.test',
      lifecycle: { autoResume: false, onTimeout: 'kill' },
    });
    expect(Date.parse(answer.body.endAt)).toBeGreaterThan(Date.now());
    expect(typeof answer.body.envdVersion).toBe('string');
  });

  it("answers 404, never 403, for another team's sandbox, on every route", async () => {
    const other = { key: teamB.apiKey };
    const routes: Array<[string, string, unknown?]> = [
      ['GET', `/sandboxes/${sandboxId}`],
      ['DELETE', `/sandboxes/${sandboxId}`],
      ['POST', `/sandboxes/${sandboxId}/timeout`, { timeout: 30 }],
      ['POST', `/sandboxes/${sandboxId}/refreshes`, {}],
      ['POST', `/sandboxes/${sandboxId}/pause`, {}],
      ['POST', `/sandboxes/${sandboxId}/resume`, {}],
      ['POST', `/sandboxes/${sandboxId}/connect`, { timeout: 30 }],
      ['GET', `/sandboxes/${sandboxId}/metrics`],
      ['GET', `/v2/sandboxes/${sandboxId}/logs`],
    ];
    for (const [method, path, body] of routes) {
      const answer = await call(method, path, { ...other, body });
      expect({ route: `${method} ${path}`, status: answer.status, code: answer.body?.code }).toEqual({ route: `${method} ${path}`, status: 404, code: 404 });
    }
    const list = await call('GET', '/v2/sandboxes', other);
    expect(list.body).toEqual([]);
    // And team A's sandbox was left alone.
    expect((await call('GET', `/sandboxes/${sandboxId}`)).status).toBe(200);
  });

  it('lists with state and metadata filters the way the SDK encodes them', async () => {
    const all = await call('GET', '/v2/sandboxes');
    expect(all.status).toBe(200);
    expect(all.body.map((s: { sandboxID: string }) => s.sandboxID).sort()).toEqual([sandboxId, pausedId].sort());

    const running = await call('GET', '/v2/sandboxes?state=running');
    expect(running.body.map((s: { sandboxID: string }) => s.sandboxID)).toEqual([sandboxId]);
    const paused = await call('GET', '/v2/sandboxes?state=paused');
    expect(paused.body).toEqual([expect.objectContaining({ sandboxID: pausedId, state: 'paused' })]);

    // SDK: URLSearchParams of encodeURIComponent'd pairs, then encoded again as a query value.
    const inner = new URLSearchParams({ [encodeURIComponent('owner')]: encodeURIComponent('a b&c') }).toString();
    const byMetadata = await call('GET', `/v2/sandboxes?metadata=${encodeURIComponent(inner)}`);
    expect(byMetadata.body.map((s: { sandboxID: string }) => s.sandboxID)).toEqual([sandboxId]);
    const noMatch = await call('GET', `/v2/sandboxes?metadata=${encodeURIComponent('owner=nobody')}`);
    expect(noMatch.body).toEqual([]);

    const v1 = await call('GET', '/sandboxes');
    expect(v1.body.map((s: { sandboxID: string }) => s.sandboxID)).toEqual([sandboxId]);
  });

  it('pages with limit and the x-next-token header', async () => {
    const extra = await stack.seedSandbox({ teamId: teamA.teamId, proxyUrl: guestUrl });
    const seen: string[] = [];
    let token: string | null = null;
    let pages = 0;
    do {
      const answer: Answer = await call('GET', `/v2/sandboxes?limit=1${token ? `&nextToken=${encodeURIComponent(token)}` : ''}`);
      expect(answer.status).toBe(200);
      expect(answer.body.length).toBeLessThanOrEqual(1);
      seen.push(...answer.body.map((s: { sandboxID: string }) => s.sandboxID));
      token = answer.headers.get('x-next-token');
      pages++;
    } while (token && pages < 10);
    expect(seen.sort()).toEqual([sandboxId, pausedId, extra].sort());
    await call('DELETE', `/sandboxes/${extra}`);
  });

  it('sets the timeout and refreshes (204)', async () => {
    const before = Date.parse((await call('GET', `/sandboxes/${sandboxId}`)).body.endAt);
    expect((await call('POST', `/sandboxes/${sandboxId}/timeout`, { body: { timeout: 3000 } })).status).toBe(204);
    const after = Date.parse((await call('GET', `/sandboxes/${sandboxId}`)).body.endAt);
    expect(after).toBeGreaterThan(before);
    expect((await call('POST', `/sandboxes/${sandboxId}/refreshes`, { body: { duration: 60 } })).status).toBe(204);
    // No body at all is allowed for refreshes.
    expect((await call('POST', `/sandboxes/${sandboxId}/refreshes`)).status).toBe(204);
  });

  it('connects to a running sandbox', async () => {
    const answer = await call('POST', `/v2/sandboxes/${sandboxId}/connect`, { body: { timeout: 60 } });
    expect(answer.status).toBe(200);
    expect(answer.body).toMatchObject({ sandboxID: sandboxId, templateID: 'base', domain: 'kiln.test', trafficAccessToken: null });
  });

  it('answers pause of a paused sandbox and resume of a running one with 409 (the SDK reads the first as "already paused")', async () => {
    const pause = await call('POST', `/sandboxes/${pausedId}/pause`, { body: {} });
    expect(pause.status).toBe(409);
    expect(pause.body).toEqual({ code: 409, message: expect.stringContaining('already paused'), error_code: 'conflict' });
    expect((await call('POST', `/sandboxes/${pausedId}/pause`)).status).toBe(409);
    const resume = await call('POST', `/sandboxes/${sandboxId}/resume`, { body: { timeout: 30 } });
    expect({ status: resume.status, error_code: resume.body.error_code }).toEqual({ status: 409, error_code: 'conflict' });
    // Its seeded host has no agent: a resume cannot reach it and is refused as an outage. Whether the host resumed it
    // cannot be known yet, so the sandbox is neither failed nor lost: it waits for its host (resuming, shown as
    // running, E2B's public state of a resume) and is still there.
    const connect = await call('POST', `/sandboxes/${pausedId}/connect`, { body: { timeout: 30 } });
    expect(connect.status).toBe(503);
    const after = await call('GET', `/sandboxes/${pausedId}`);
    expect(after.status).toBe(200);
    expect(after.body.state).toBe('running');
  });

  it("reads metrics from the guest agent's /metrics through the route", async () => {
    const answer = await call('GET', `/sandboxes/${sandboxId}/metrics`);
    expect(answer.status).toBe(200);
    expect(answer.body).toEqual([
      expect.objectContaining({ cpuCount: 2, cpuUsedPct: 12.5, memTotal: 512e6, memUsed: 100e6, memCache: 10e6, diskUsed: 1e9, diskTotal: 2e9, timestampUnix: expect.any(Number) }),
    ]);
    expect((await call('GET', `/sandboxes/${pausedId}/metrics`)).body).toEqual([]);
    expect((await call('GET', `/sandboxes/${sandboxId}/metrics?end=1`)).body).toEqual([]);
  });

  it('returns lifecycle logs in the v2 and v1 shapes', async () => {
    const v2 = await call('GET', `/v2/sandboxes/${sandboxId}/logs`);
    expect(v2.status).toBe(200);
    expect(v2.body.logs.length).toBeGreaterThan(0);
    expect(v2.body.logs[0]).toEqual({ timestamp: expect.any(String), message: expect.any(String), level: 'info', fields: {} });
    const backward = await call('GET', `/v2/sandboxes/${sandboxId}/logs?direction=backward&limit=1`);
    expect(backward.body.logs).toEqual([v2.body.logs[v2.body.logs.length - 1]]);
    const v1 = await call('GET', `/sandboxes/${sandboxId}/logs`);
    expect(v1.body.logs[0]).toEqual({ timestamp: expect.any(String), line: expect.any(String) });
  });

  it('kills a sandbox (204), then answers 404 for it', async () => {
    const doomed = await stack.seedSandbox({ teamId: teamA.teamId, proxyUrl: guestUrl });
    expect((await call('DELETE', `/sandboxes/${doomed}`)).status).toBe(204);
    expect((await call('GET', `/sandboxes/${doomed}`)).status).toBe(404);
    expect((await call('DELETE', `/sandboxes/${doomed}`)).status).toBe(404);
  });

  it('answers create for an unknown template with 404', async () => {
    const answer = await call('POST', '/sandboxes', { body: { templateID: 'does-not-exist' } });
    expect(answer.status).toBe(404);
    expect(answer.body).toMatchObject({ code: 404, error_code: 'not_found' });
  });

  it('passes Idempotency-Key through, scoped to the team: a retry gets the first attempt\'s outcome', async () => {
    const headers = { 'idempotency-key': 'retry-me-1' };
    const first = await call('POST', '/v2/sandboxes', { body: { templateID: 'base' }, headers });
    expect(first.status).toBe(503);
    // The first attempt's sandbox ended (no host); the retry is told so instead of creating another.
    const retry = await call('POST', '/v2/sandboxes', { body: { templateID: 'base' }, headers });
    expect(retry.status).toBe(409);
    expect(retry.body.message).toContain('already ended');
    // The same key from another team is a different request.
    const otherTeam = await call('POST', '/v2/sandboxes', { key: teamB.apiKey, body: { templateID: 'base' }, headers });
    expect(otherTeam.status).toBe(503);
  });

  it('answers create with 503 and Retry-After when no host can take the sandbox', async () => {
    const answer = await call('POST', '/v2/sandboxes', { body: { templateID: 'base', timeout: 30 } });
    expect(answer.status).toBe(503);
    expect(answer.body).toMatchObject({ code: 503, error_code: 'resource_exhausted' });
    expect(Number(answer.headers.get('retry-after'))).toBeGreaterThan(0);
  });
});

describe('templates', () => {
  it('lists public templates in E2B shape and resolves aliases', async () => {
    await stack.templates.ensurePublicTemplate({ templateId: 'base', alias: 'base', vcpus: 1, memoryMib: 256, diskMib: 1024, envdVersion: '0.5.7', contentHash: 'gateway-test' });
    const list = await call('GET', '/templates');
    expect(list.status).toBe(200);
    expect(list.body).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ templateID: 'base', aliases: ['base'], public: true, buildStatus: 'ready', cpuCount: 1, memoryMB: 256, spawnCount: expect.any(Number) }),
      ]),
    );
    expect((await call('GET', '/templates/aliases/base')).body).toEqual({ templateID: 'base', public: true });
    expect((await call('GET', '/templates/aliases/nope')).status).toBe(404);
  });

  it("answers another team's private template alias with 403 (E2B: the name is taken; the SDK's exists() reads it so) and lists it nowhere", async () => {
    await stack.prisma.template.create({ data: { id: 'private-b', teamId: teamB.teamId, public: false, aliases: { create: { alias: 'secret-b' } } } });
    expect((await call('GET', '/templates/aliases/secret-b', { key: teamB.apiKey })).status).toBe(200);
    const answer = await call('GET', '/templates/aliases/secret-b', { key: teamA.apiKey });
    expect(answer.status).toBe(403);
    expect(answer.body).toEqual({ code: 403, message: 'template alias secret-b belongs to another team', error_code: 'permission_denied' });
    expect((await call('GET', '/templates/private-b', { key: teamA.apiKey })).status).toBe(404);
    expect((await call('GET', '/templates')).body.map((t: { templateID: string }) => t.templateID)).not.toContain('private-b');
  });
});

describe('browsers', () => {
  it('answers CORS preflights and exposes the paging header', async () => {
    const preflight = await fetch(`${stack.gateway.apiUrl}/v2/sandboxes`, {
      method: 'OPTIONS',
      headers: { origin: 'https://app.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'x-api-key,content-type' },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get('access-control-allow-origin')).toBe('*');
    expect(preflight.headers.get('access-control-allow-headers')).toContain('x-api-key');
    const list = await call('GET', '/v2/sandboxes', { headers: { origin: 'https://app.example' } });
    expect(list.headers.get('access-control-expose-headers')).toContain('x-next-token');
  });
});

describe('OpenAPI document', () => {
  it('describes the routes the gateway serves, with validated request bodies', async () => {
    const answer = await call('GET', '/openapi.json', { key: null });
    expect(answer.body.openapi).toMatch(/^3\./);
    const paths = Object.keys(answer.body.paths);
    for (const path of ['/sandboxes', '/v2/sandboxes', '/sandboxes/{sandboxID}', '/sandboxes/{sandboxID}/timeout', '/v2/sandboxes/{sandboxID}/logs', '/templates', '/templates/aliases/{alias}']) {
      expect(paths).toContain(path);
    }
    expect(paths).not.toContain('/openapi.json');
    const newSandbox = answer.body.components.schemas.NewSandboxDto;
    expect(newSandbox.required).toEqual(['templateID']);
    expect(newSandbox.properties.timeout).toMatchObject({ type: 'integer', minimum: 0, maximum: 86400 });
    expect(answer.body.components.securitySchemes.ApiKeyAuth).toMatchObject({ type: 'apiKey', in: 'header', name: 'X-API-Key' });
  });
});

describe('rate limiting', () => {
  it('answers 429 in the error shape with Retry-After once a key exceeds its per-minute budget', async () => {
    const limited = await stack.startGateway({ RATE_LIMIT_PER_MINUTE: '3' });
    const team = await stack.seedTeam();
    const statuses: number[] = [];
    let last: Response | undefined;
    for (let i = 0; i < 4; i++) {
      last = await fetch(`${limited.apiUrl}/templates`, { headers: { 'x-api-key': team.apiKey } });
      statuses.push(last.status);
    }
    expect(statuses).toEqual([200, 200, 200, 429]);
    expect(await last!.json()).toEqual({ code: 429, message: expect.stringContaining('3 requests per minute'), error_code: 'rate_limited' });
    expect(Number(last!.headers.get('retry-after'))).toBeGreaterThan(0);
    // The budget is per key: another key is unaffected.
    const other = await stack.seedTeam();
    expect((await fetch(`${limited.apiUrl}/templates`, { headers: { 'x-api-key': other.apiKey } })).status).toBe(200);
  });
});
