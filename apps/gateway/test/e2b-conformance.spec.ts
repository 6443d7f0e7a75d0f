import 'reflect-metadata';
import { FakeHostAgent } from '../../scheduler/test/support/fake-host-agent';
import { NOT_SUPPORTED_ROUTES } from '../src/not-supported/not-supported-routes';
import { SeededTeam, TestStack } from './support/test-stack';

jest.setTimeout(60_000);

interface Answer {
  status: number;
  headers: Headers;
  // Response JSON of several shapes; each test asserts the one it expects.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

let stack: TestStack;
let team: SeededTeam;
let otherTeam: SeededTeam;
/** A host agent that really answers creates, so POST /sandboxes succeeds end to end (no VM). */
let host: FakeHostAgent;
/** Stands in for the proxy of seeded sandboxes: nothing in this file talks to a sandbox. */
const NO_PROXY = 'http://127.0.0.1:1';

async function call(method: string, path: string, options: { key?: string | null; body?: unknown } = {}): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (options.key !== null) headers['x-api-key'] = options.key ?? team.apiKey;
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(stack.gateway.apiUrl + path, { method, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  const text = await response.text();
  let body: unknown = text;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    // not JSON: kept as text so an assertion shows it
  }
  return { status: response.status, headers: response.headers, body };
}

const idsOf = (answer: Answer): string[] => answer.body.map((s: { sandboxID: string }) => s.sandboxID);

beforeAll(async () => {
  stack = await TestStack.start();
  [team, otherTeam] = [await stack.seedTeam(), await stack.seedTeam()];
  await stack.templates.ensurePublicTemplate({ templateId: 'base', alias: 'base', vcpus: 1, memoryMib: 256, diskMib: 1024, envdVersion: '0.5.7', contentHash: 'gateway-test' });
  host = new FakeHostAgent();
  await host.start();
});

afterAll(async () => {
  await stack?.stop();
  await host?.stop();
});

describe('GET /v2/sandboxes: order, startedAfter, template and paging', () => {
  let lister: SeededTeam;
  const t0 = Date.parse('2026-02-01T10:00:00.000Z');
  const at = (seconds: number) => new Date(t0 + seconds * 1000);
  /** Seeded ids by start second; 2a and 2b start at the same time. */
  const ids: Record<string, string> = {};

  beforeAll(async () => {
    lister = await stack.seedTeam();
    for (const [name, second, metadata] of [
      ['s1', 1, { tier: 'a' }],
      ['s2a', 2, { tier: 'b' }],
      ['s2b', 2, { tier: 'a' }],
      ['s3', 3, { tier: 'a' }],
      ['s4', 4, { tier: 'b' }],
    ] as const) {
      ids[name] = await stack.seedSandbox({ teamId: lister.teamId, proxyUrl: NO_PROXY, metadata });
      await stack.prisma.sandbox.update({ where: { id: ids[name] }, data: { startedAt: at(second) } });
    }
  });

  /** E2B's order: start time, newest first; among equal start times the id ascending. */
  function expectedDesc(names: string[]): string[] {
    return names
      .map((name) => ({ id: ids[name], second: Number(name.slice(1, 2)) }))
      .sort((a, b) => b.second - a.second || a.id.localeCompare(b.id))
      .map((s) => s.id);
  }
  const allDesc = () => expectedDesc(['s1', 's2a', 's2b', 's3', 's4']);
  const list = (query: string) => call('GET', `/v2/sandboxes${query}`, { key: lister.apiKey });

  async function pages(query: string): Promise<string[][]> {
    const seen: string[][] = [];
    let token: string | null = null;
    do {
      const answer: Answer = await list(`${query}${token ? `&nextToken=${encodeURIComponent(token)}` : ''}`);
      expect(answer.status).toBe(200);
      seen.push(idsOf(answer));
      token = answer.headers.get('x-next-token');
    } while (token && seen.length < 20);
    return seen;
  }

  it('lists newest first by default and oldest first with order=asc, with the running total', async () => {
    const desc = await list('');
    expect(idsOf(desc)).toEqual(allDesc());
    expect(desc.headers.get('x-total-running')).toBe('5');
    expect(desc.headers.get('x-next-token')).toBeNull();
    expect(desc.body[0].startedAt).toBe(at(4).toISOString());
    expect(idsOf(await list('?order=desc'))).toEqual(allDesc());
    expect(idsOf(await list('?order=asc'))).toEqual([...allDesc()].reverse());
  });

  it('pages with limit and x-next-token in both orders, nothing repeated or skipped', async () => {
    const desc = await pages('?limit=2');
    expect(desc.map((page) => page.length)).toEqual([2, 2, 1]);
    expect(desc.flat()).toEqual(allDesc());
    const asc = await pages('?order=asc&limit=2');
    expect(asc.flat()).toEqual([...allDesc()].reverse());
    // The total counts every page, not this one.
    expect((await list('?limit=1')).headers.get('x-total-running')).toBe('5');
  });

  it("refuses a token replayed under the other order (E2B), naming nextToken", async () => {
    const token = (await list('?limit=2')).headers.get('x-next-token') as string;
    const answer = await list(`?order=asc&limit=2&nextToken=${encodeURIComponent(token)}`);
    expect(answer.status).toBe(400);
    expect(answer.body).toEqual({ code: 400, message: expect.stringContaining('nextToken'), error_code: 'invalid_argument' });
  });

  it('filters by startedAfter (inclusive), in any RFC 3339 offset', async () => {
    const from2 = expectedDesc(['s2a', 's2b', 's3', 's4']);
    expect(idsOf(await list(`?startedAfter=${at(2).toISOString()}`))).toEqual(from2);
    expect(idsOf(await list(`?startedAfter=${encodeURIComponent('2026-02-01T12:00:02+02:00')}`))).toEqual(from2);
    // A sandbox's own startedAt, fed back, includes it.
    const newest = (await list('?limit=1')).body[0];
    expect(idsOf(await list(`?startedAfter=${encodeURIComponent(newest.startedAt)}`))).toEqual([newest.sandboxID]);
    expect(idsOf(await list(`?startedAfter=${at(2).toISOString()}&order=asc&limit=2`))).toEqual([...from2].reverse().slice(0, 2));
  });

  it('filters by template id or alias, combined with state and metadata', async () => {
    expect(idsOf(await list('?template=base'))).toEqual(allDesc());
    const tierA = await list(`?template=base&state=running&metadata=${encodeURIComponent('tier=a')}&order=asc`);
    expect(idsOf(tierA)).toEqual(expectedDesc(['s1', 's2b', 's3']).reverse());
    expect(tierA.headers.get('x-total-running')).toBe('3');
    // A template the team cannot see matches nothing: an empty list, as E2B answers.
    const unknown = await list('?template=not-a-template');
    expect({ status: unknown.status, body: unknown.body, total: unknown.headers.get('x-total-running') }).toEqual({ status: 200, body: [], total: '0' });
  });

  it('answers bad values with 400 {code, message} naming the parameter', async () => {
    for (const [query, name] of [
      ['?order=newest', 'order'],
      ['?startedAfter=yesterday', 'startedAfter'],
      ['?startedAfter=2026-02-01T12:00:02+02:00', 'startedAfter'],
      ['?startedAfter=2026-02-30T00:00:00Z', 'startedAfter'],
      ['?template=base:v2', 'template'],
      ['?template=..%2Fx', 'template'],
      ['?limit=101', 'limit'],
      ['?nextToken=forged', 'nextToken'],
    ]) {
      const answer = await list(query);
      expect({ query, status: answer.status, body: answer.body }).toEqual({
        query,
        status: 400,
        body: { code: 400, message: expect.stringContaining(name), error_code: 'invalid_argument' },
      });
    }
  });
});

describe('routes Kiln does not implement yet', () => {
  let sandboxId: string;

  beforeAll(async () => {
    sandboxId = await stack.seedSandbox({ teamId: team.teamId, proxyUrl: NO_PROXY });
  });

  const concrete = (path: string, sandbox = sandboxId) =>
    path.replace('{sandboxID}', sandbox).replace('{templateID}', 'base').replace('{buildID}', '0b0e8d2c-1f1a-4c52-9f5e-0d8a7b6c5d4e').replace('{hash}', 'deadbeef').replace(/\{\w+\}/g, 'x1');

  it.each(NOT_SUPPORTED_ROUTES.map((r) => [`${r.method} ${r.path}`, r] as const))('%s answers 501 naming the route', async (_name, route) => {
    const answer = await call(route.method, concrete(route.path), { body: route.method === 'POST' || route.method === 'PATCH' ? {} : undefined });
    expect({ status: answer.status, body: answer.body }).toEqual({
      status: 501,
      body: { code: 501, message: expect.stringContaining(`${route.method} ${route.path}`), error_code: 'not_implemented' },
    });
    // Still an authenticated API.
    expect((await call(route.method, concrete(route.path), { key: null })).status).toBe(401);
  });

  it("keeps 404 for a missing or another team's sandbox, and 400 for a bad id or body", async () => {
    // fork and snapshots of a killed sandbox: the SDK must raise SandboxNotFoundError, not "not supported".
    for (const route of NOT_SUPPORTED_ROUTES.filter((r) => r.path.includes('{sandboxID}'))) {
      const body = route.method === 'POST' ? {} : undefined;
      expect((await call(route.method, concrete(route.path, 'doesnotexist0'), { body })).status).toBe(404);
      expect((await call(route.method, concrete(route.path), { key: otherTeam.apiKey, body })).status).toBe(404);
    }
    for (const action of ['pause', 'resume', 'fork', 'snapshots']) {
      expect((await call('POST', `/sandboxes/doesnotexist0/${action}`, { body: {} })).status).toBe(404);
      expect((await call('POST', `/sandboxes/${sandboxId}/${action}`, { key: otherTeam.apiKey, body: {} })).status).toBe(404);
      expect((await call('POST', `/sandboxes/NOT-AN-ID/${action}`, { body: {} })).status).toBe(400);
    }
    expect((await call('POST', `/sandboxes/${sandboxId}/pause`, { body: { memory: 'no' } })).status).toBe(400);
  });

  it('leaves them out of the OpenAPI document, which lists what is served', async () => {
    const paths = Object.keys((await call('GET', '/openapi.json', { key: null })).body.paths);
    expect(paths).not.toContain('/volumes');
    expect(paths).toEqual(expect.arrayContaining(['/sandboxes/{sandboxID}/fork', '/sandboxes/{sandboxID}/pause', '/snapshots', '/templates/{templateID}']));
  });
});

describe('create: autoPause and spawn counters', () => {
  beforeAll(async () => {
    await stack.hosts.register({
      hostId: 'fake-host',
      address: host.address,
      proxyUrl: NO_PROXY,
      acceleration: 'tcg',
      version: 'test',
      vcpus: 64,
      memoryMib: 65536,
      sandboxes: 64,
      templates: ['base'],
      readyCloneTemplates: ['base'],
    });
  });

  it('accepts autoPause, autoResume and the lifecycle object, reports lifecycle, and refuses autoResume with a disk-only pause', async () => {
    const sdkShape = await call('POST', '/sandboxes', { body: { templateID: 'base', timeout: 60, autoPause: true, autoResume: { enabled: true } } });
    expect(sdkShape.status).toBe(201);
    expect((await call('GET', `/sandboxes/${sdkShape.body.sandboxID}`)).body.lifecycle).toEqual({ onTimeout: 'pause', autoResume: true });
    const listed = (await call('GET', '/v2/sandboxes')).body.find((s: { sandboxID: string }) => s.sandboxID === sdkShape.body.sandboxID);
    expect(listed.lifecycle).toEqual({ onTimeout: 'pause', autoResume: true });

    const lifecycleShape = await call('POST', '/v2/sandboxes', { body: { templateID: 'base', timeout: 60, lifecycle: { onTimeout: { action: 'pause', keepMemory: false } } } });
    expect(lifecycleShape.status).toBe(201);
    expect((await call('GET', `/sandboxes/${lifecycleShape.body.sandboxID}`)).body.lifecycle).toEqual({ onTimeout: 'pause', autoResume: false });

    for (const body of [
      { templateID: 'base', autoPause: true, autoPauseMemory: false, autoResume: { enabled: true } },
      { templateID: 'base', lifecycle: { onTimeout: { action: 'pause', keepMemory: false }, autoResume: true } },
      { templateID: 'base', lifecycle: { onTimeout: 'sleep' } },
      { templateID: 'base', lifecycle: { onTimeout: { action: 'kill', keepMemory: true } } },
      { templateID: 'base', autoPause: false, lifecycle: { onTimeout: 'pause' } },
    ]) {
      const refused = await call('POST', '/sandboxes', { body });
      expect({ body, status: refused.status, error_code: refused.body.error_code }).toEqual({ body, status: 400, error_code: 'invalid_argument' });
    }
    // connect with the deprecated autoPause is accepted (the sandbox is missing: 404); memory: false is not implemented.
    expect((await call('POST', `/sandboxes/${'a'.repeat(8)}/connect`, { body: { timeout: 10, autoPause: true } })).status).toBe(404);
    const diskOnly = await call('POST', `/sandboxes/${sdkShape.body.sandboxID}/connect`, { body: { timeout: 10, memory: false } });
    expect({ status: diskOnly.status, message: diskOnly.body.message }).toEqual({ status: 400, message: expect.stringContaining('memory: false') });

    const killOnTimeout = await call('POST', '/sandboxes', { body: { templateID: 'base', timeout: 60, autoPause: false } });
    expect(killOnTimeout.status).toBe(201);
    const detail = await call('GET', `/sandboxes/${killOnTimeout.body.sandboxID}`);
    expect(detail.body.lifecycle).toEqual({ autoResume: false, onTimeout: 'kill' });
  });

  it('moves spawnCount and lastSpawnedAt of the template when sandboxes start from it', async () => {
    const templateOf = async () => (await call('GET', '/templates')).body.find((t: { templateID: string }) => t.templateID === 'base');
    const before = await templateOf();
    expect(before).toEqual(expect.objectContaining({ spawnCount: expect.any(Number), lastSpawnedAt: before.spawnCount > 0 ? expect.any(String) : null }));

    const created: string[] = [];
    for (const templateID of ['base', 'base']) {
      const answer = await call('POST', '/sandboxes', { body: { templateID, timeout: 60 } });
      expect(answer.status).toBe(201);
      created.push(answer.body.sandboxID);
    }
    const newest = await call('GET', `/sandboxes/${created[1]}`);

    const after = await templateOf();
    expect(after.spawnCount).toBe(before.spawnCount + 2);
    expect(after.lastSpawnedAt).toBe(newest.body.startedAt);
    const detail = await call('GET', '/templates/base');
    expect(detail.body).toMatchObject({ templateID: 'base', spawnCount: after.spawnCount, lastSpawnedAt: after.lastSpawnedAt });

    // A create that does not start a sandbox counts nothing.
    expect((await call('POST', '/sandboxes', { body: { templateID: 'base', autoPause: true, autoPauseMemory: false, autoResume: { enabled: true } } })).status).toBe(400);
    expect((await templateOf()).spawnCount).toBe(after.spawnCount);
  });
});

describe('pause, resume, connect, fork and snapshots over HTTP (a fake host agent)', () => {
  beforeAll(async () => {
    await stack.hosts.register({
      hostId: 'fake-host',
      address: host.address,
      proxyUrl: NO_PROXY,
      acceleration: 'tcg',
      version: 'test',
      vcpus: 64,
      memoryMib: 65536,
      sandboxes: 64,
      templates: ['base'],
      readyCloneTemplates: ['base'],
    });
  });

  async function created(): Promise<string> {
    const answer = await call('POST', '/v2/sandboxes', { body: { templateID: 'base', timeout: 120 } });
    expect(answer.status).toBe(201);
    return answer.body.sandboxID;
  }

  it('pause 204 then 409; resume 201 then 409; connect 201 when it resumed, 200 when running; 404 unknown', async () => {
    const id = await created();
    expect((await call('POST', `/sandboxes/${id}/pause`)).status).toBe(204);
    expect(host.pauseRequests.at(-1)).toEqual({ sandboxId: id, keepMemory: true });
    const again = await call('POST', `/sandboxes/${id}/pause`, { body: {} });
    expect({ status: again.status, body: again.body }).toEqual({ status: 409, body: { code: 409, message: expect.stringContaining('already paused'), error_code: 'conflict' } });
    expect((await call('GET', `/sandboxes/${id}`)).body.state).toBe('paused');
    expect(idsOf(await call('GET', '/v2/sandboxes?state=paused'))).toContain(id);

    const resumed = await call('POST', `/sandboxes/${id}/resume`, { body: { timeout: 60 } });
    expect(resumed.status).toBe(201);
    expect(resumed.body).toMatchObject({ sandboxID: id, templateID: 'base', envdAccessToken: expect.any(String), domain: 'kiln.test' });
    expect((await call('POST', `/sandboxes/${id}/resume`, { body: {} })).status).toBe(409);

    expect((await call('POST', `/sandboxes/${id}/pause`, { body: { memory: false } })).status).toBe(204);
    expect(host.pauseRequests.at(-1)).toEqual({ sandboxId: id, keepMemory: false });
    const connected = await call('POST', `/v2/sandboxes/${id}/connect`, { body: { timeout: 60 } });
    expect({ status: connected.status, sandboxID: connected.body.sandboxID }).toEqual({ status: 201, sandboxID: id });
    expect((await call('POST', `/v2/sandboxes/${id}/connect`, { body: { timeout: 60 } })).status).toBe(200);
    expect((await call('POST', '/sandboxes/doesnotexist0/pause')).status).toBe(404);

    // Killing a paused sandbox destroys it on its host.
    expect((await call('POST', `/sandboxes/${id}/pause`)).status).toBe(204);
    expect((await call('DELETE', `/sandboxes/${id}`)).status).toBe(204);
    expect(host.destroyed).toContain(id);
  });

  it('fork answers 201 with one {sandbox} or {error} per fork; a paused source is a 409; count is checked', async () => {
    const source = await created();
    host.failForkAt = new Set([2]);
    const answer = await call('POST', `/sandboxes/${source}/fork`, { body: { count: 3, timeout: 30 } });
    host.failForkAt = new Set();
    expect(answer.status).toBe(201);
    expect(answer.body).toHaveLength(3);
    expect(answer.body[0]).toEqual({ sandbox: expect.objectContaining({ sandboxID: expect.any(String), templateID: 'base', envdAccessToken: expect.any(String), domain: 'kiln.test' }) });
    expect(answer.body[1].sandbox.sandboxID).not.toBe(answer.body[0].sandbox.sandboxID);
    expect(answer.body[2]).toEqual({ error: { code: 503, message: expect.stringContaining('no slot') } });
    expect((await call('GET', `/sandboxes/${answer.body[0].sandbox.sandboxID}`)).body.state).toBe('running');
    expect((await call('POST', `/sandboxes/${source}/fork`, { body: { count: 0 } })).status).toBe(400);
    expect((await call('POST', `/sandboxes/${source}/fork`, { body: { count: 101 } })).status).toBe(400);
    const one = await call('POST', `/sandboxes/${source}/fork`);
    expect({ status: one.status, length: one.body.length }).toEqual({ status: 201, length: 1 });
    expect((await call('POST', `/sandboxes/${source}/pause`)).status).toBe(204);
    expect((await call('POST', `/sandboxes/${source}/fork`, { body: { count: 1 } })).status).toBe(409);
  });

  it('snapshots: create 201 SnapshotInfo, GET /snapshots with x-next-token, create a sandbox from one, DELETE /templates/{snapshotID}', async () => {
    const source = await created();
    const named = await call('POST', `/sandboxes/${source}/snapshots`, { body: { name: 'conf-snap' } });
    expect({ status: named.status, body: named.body }).toEqual({ status: 201, body: { snapshotID: 'conf-snap:default', names: ['conf-snap:default'] } });
    const unnamed = await call('POST', `/sandboxes/${source}/snapshots`, { body: {} });
    expect(unnamed.status).toBe(201);
    expect(unnamed.body).toEqual({ snapshotID: expect.stringMatching(/:default$/), names: [] });
    expect((await call('POST', `/sandboxes/${source}/snapshots`, { body: { name: 'Bad Name' } })).status).toBe(400);

    const first = await call('GET', `/snapshots?sandboxID=${source}&limit=1`);
    expect({ status: first.status, body: first.body }).toEqual({ status: 200, body: [unnamed.body] });
    const token = first.headers.get('x-next-token');
    expect(token).toBeTruthy();
    const second = await call('GET', `/snapshots?sandboxID=${source}&limit=1&nextToken=${encodeURIComponent(token as string)}`);
    expect(second.body).toEqual([named.body]);
    expect((await call('GET', '/snapshots?name=conf-snap')).body).toEqual([named.body]);
    expect((await call('GET', '/snapshots', { key: otherTeam.apiKey })).body).toEqual([]);

    const fromSnapshot = await call('POST', '/sandboxes', { body: { templateID: named.body.snapshotID, timeout: 30 } });
    expect(fromSnapshot.status).toBe(201);
    expect(host.createRequests.at(-1)).toMatchObject({ sandboxId: fromSnapshot.body.sandboxID, snapshotId: host.snapshotRequests[0].snapshotId });

    expect((await call('DELETE', `/templates/${encodeURIComponent(named.body.snapshotID)}`)).status).toBe(204);
    expect((await call('DELETE', `/templates/${encodeURIComponent(named.body.snapshotID)}`)).status).toBe(404);
    expect((await call('DELETE', `/templates/${encodeURIComponent(unnamed.body.snapshotID)}`, { key: otherTeam.apiKey })).status).toBe(404);
    const template = await call('DELETE', '/templates/base');
    expect({ status: template.status, error_code: template.body.error_code }).toEqual({ status: 403, error_code: 'permission_denied' });
    expect((await call('GET', '/snapshots')).body).toEqual([unnamed.body]);
  });
});

describe('GET /templates/{templateID}', () => {
  it("answers E2B's TemplateWithBuilds, newest build first, paged with x-next-token", async () => {
    await stack.templates.ensurePublicTemplate({ templateId: 'base', alias: 'base', vcpus: 1, memoryMib: 256, diskMib: 1024, envdVersion: '0.5.7', contentHash: 'gateway-test-2' });
    const answer = await call('GET', '/templates/base');
    expect(answer.status).toBe(200);
    expect(answer.body).toEqual({
      templateID: 'base',
      public: true,
      aliases: ['base'],
      names: ['base'],
      createdAt: expect.any(String),
      updatedAt: expect.any(String),
      spawnCount: expect.any(Number),
      lastSpawnedAt: expect.anything(),
      builds: [expect.any(Object), expect.any(Object)],
    });
    expect(answer.body.builds[0]).toEqual({
      buildID: expect.stringMatching(/^[0-9a-f-]{36}$/),
      status: 'ready',
      createdAt: expect.any(String),
      updatedAt: expect.any(String),
      finishedAt: expect.any(String),
      cpuCount: 1,
      memoryMB: 256,
      diskSizeMB: 1024,
      envdVersion: '0.5.7',
    });
    expect(Date.parse(answer.body.builds[0].createdAt)).toBeGreaterThanOrEqual(Date.parse(answer.body.builds[1].createdAt));

    const first = await call('GET', '/templates/base?limit=1');
    const token = first.headers.get('x-next-token');
    expect(first.body.builds.map((b: { buildID: string }) => b.buildID)).toEqual([answer.body.builds[0].buildID]);
    const second = await call('GET', `/templates/base?limit=1&nextToken=${encodeURIComponent(token as string)}`);
    expect(second.body.builds.map((b: { buildID: string }) => b.buildID)).toEqual([answer.body.builds[1].buildID]);
    expect(second.headers.get('x-next-token')).toBeNull();
  });

  it("finds by alias, hides another team's private template behind 404, and names bad parameters", async () => {
    await stack.prisma.template.create({ data: { id: 'private-other', teamId: otherTeam.teamId, aliases: { create: { alias: 'other-secret' } } } });
    expect((await call('GET', '/templates/other-secret', { key: otherTeam.apiKey })).body).toMatchObject({ templateID: 'private-other', builds: [] });
    for (const ref of ['private-other', 'other-secret', 'nope']) expect((await call('GET', `/templates/${ref}`)).status).toBe(404);
    for (const [query, name] of [
      ['?limit=0', 'limit'],
      ['?limit=101', 'limit'],
      ['?nextToken=forged', 'nextToken'],
    ]) {
      const answer = await call('GET', `/templates/base${query}`);
      expect({ status: answer.status, message: answer.body.message }).toEqual({ status: 400, message: expect.stringContaining(name) });
    }
    expect((await call('GET', '/templates/base:v1')).status).toBe(400);
  });
});
