import 'reflect-metadata';
import { request as httpRequest } from 'node:http';
import { RestartableServer, eventually, startRestartableRedis } from '@kiln/testing';
import { RunningGateway } from '../src/gateway';
import { SeededTeam, TestStack } from './support/test-stack';

jest.setTimeout(60_000);

/** Within this an outage is answered, not waited out. */
const OUTAGE_ANSWER_WITHIN_MS = 5_000;

interface Answer {
  status: number;
  retryAfter: string | undefined;
  body: { code?: number; message?: string; error_code?: string; dependencies?: Record<string, { status: string }> };
  elapsedMs: number;
}

/**
 * A GET from a chosen loopback source address (the whole of 127.0.0.0/8 is local on Linux), so each test is its own
 * client address and the gateway sees a real peer, not a header.
 */
function get(gateway: RunningGateway, path: string, options: { from: string; key?: string; forwardedFor?: string }): Promise<Answer> {
  const url = new URL(path, gateway.apiUrl);
  const headers: Record<string, string> = {};
  if (options.key !== undefined) headers['x-api-key'] = options.key;
  if (options.forwardedFor) headers['x-forwarded-for'] = options.forwardedFor;
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: url.hostname, port: url.port, path: url.pathname + url.search, method: 'GET', headers, localAddress: options.from, timeout: 20_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        const retryAfter = res.headers['retry-after'];
        resolve({ status: res.statusCode ?? 0, retryAfter: Array.isArray(retryAfter) ? retryAfter[0] : retryAfter, body: text ? JSON.parse(text) : {}, elapsedMs: Date.now() - started });
      });
    });
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end();
  });
}

const BAD_KEY = `e2b_${'0'.repeat(40)}`;

let stack: TestStack;
let team: SeededTeam;

beforeAll(async () => {
  stack = await TestStack.start({ gateway: false });
  team = await stack.seedTeam();
}, 60_000);

afterAll(async () => {
  await stack?.stop();
}, 60_000);

describe('requests without a valid API key (per client address)', () => {
  let gateway: RunningGateway;

  beforeAll(async () => {
    // 127.0.0.1 is the trusted proxy; any other loopback address is a client connecting directly.
    gateway = await stack.startGateway({ RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE: '3', RATE_LIMIT_PER_MINUTE: '1000', TRUSTED_PROXIES: '127.0.0.1/32' });
  });

  afterAll(async () => {
    await gateway?.close();
  });

  it('answers 401 up to the budget, then 429 in the error shape with Retry-After, also for a valid key from that address', async () => {
    const from = '127.0.0.11';
    const statuses = [];
    for (const key of [BAD_KEY, undefined, BAD_KEY]) statuses.push((await get(gateway, '/v2/sandboxes', { from, key })).status);
    expect(statuses).toEqual([401, 401, 401]);

    const refused = await get(gateway, '/v2/sandboxes', { from, key: BAD_KEY });
    expect(refused.status).toBe(429);
    expect(refused.body).toEqual({ code: 429, message: expect.stringContaining('at most 3 requests per minute without a valid API key'), error_code: 'rate_limited' });
    expect(Number(refused.retryAfter)).toBeGreaterThan(0);
    // The address is over its budget: refused before any key lookup, for the rest of the window.
    expect((await get(gateway, '/v2/sandboxes', { from, key: team.apiKey })).status).toBe(429);

    // Control: another client address still gets answers (a valid key: 200, a bad one: 401).
    expect((await get(gateway, '/v2/sandboxes', { from: '127.0.0.12', key: team.apiKey })).status).toBe(200);
    expect((await get(gateway, '/v2/sandboxes', { from: '127.0.0.12', key: BAD_KEY })).status).toBe(401);
  });

  it('ignores X-Forwarded-For from a peer that is not a trusted proxy, so a sprayer cannot pose as many clients', async () => {
    const from = '127.0.0.13';
    const statuses = [];
    for (let i = 0; i < 5; i++) statuses.push((await get(gateway, '/v2/sandboxes', { from, key: BAD_KEY, forwardedFor: `198.51.100.${i + 1}` })).status);
    expect(statuses).toEqual([401, 401, 401, 429, 429]);
  });

  it('believes X-Forwarded-For from a trusted proxy: each forwarded client has its own budget', async () => {
    const from = '127.0.0.1';
    const first = [];
    for (let i = 0; i < 4; i++) first.push((await get(gateway, '/v2/sandboxes', { from, key: BAD_KEY, forwardedFor: '203.0.113.7' })).status);
    expect(first).toEqual([401, 401, 401, 429]);
    // Another client behind the same proxy is counted on its own.
    expect((await get(gateway, '/v2/sandboxes', { from, key: BAD_KEY, forwardedFor: '203.0.113.8' })).status).toBe(401);
    // A spoofed entry left of the proxy's own does not help: the proxy appended the real client last.
    expect((await get(gateway, '/v2/sandboxes', { from, key: BAD_KEY, forwardedFor: '192.0.2.1, 203.0.113.7' })).status).toBe(429);
  });
});

describe('when the rate limiter cannot reach Redis', () => {
  let redis: RestartableServer;
  let failClosed: RunningGateway;
  let failOpen: RunningGateway;

  beforeAll(async () => {
    redis = await startRestartableRedis();
    failClosed = await stack.startGateway({ REDIS_URL: redis.url });
    failOpen = await stack.startGateway({ REDIS_URL: redis.url, RATE_LIMIT_FAIL_OPEN: 'true' });
  }, 60_000);

  afterAll(async () => {
    await redis?.start().catch(() => undefined);
    await failClosed?.close();
    await failOpen?.close();
    await redis?.dispose();
  }, 60_000);

  it('refuses API requests with 503 in the error shape at once (fail closed), still serves /health, and recovers', async () => {
    const from = '127.0.0.21';
    expect((await get(failClosed, '/v2/sandboxes', { from, key: team.apiKey })).status).toBe(200);
    await redis.stop();
    try {
      for (const key of [team.apiKey, BAD_KEY, undefined]) {
        const answer = await get(failClosed, '/v2/sandboxes', { from, key });
        expect(answer.status).toBe(503);
        expect(answer.body).toEqual({ code: 503, message: expect.stringContaining('rate limiting is unavailable'), error_code: 'unavailable' });
        expect(Number(answer.retryAfter)).toBeGreaterThan(0);
        expect(answer.elapsedMs).toBeLessThan(OUTAGE_ANSWER_WITHIN_MS);
      }
      const health = await get(failClosed, '/health', { from });
      expect(health.status).toBe(503);
      expect(health.body.dependencies?.redis.status).toBe('down');

      // Control: RATE_LIMIT_FAIL_OPEN=true lets the same request through uncounted.
      expect((await get(failOpen, '/v2/sandboxes', { from, key: team.apiKey })).status).toBe(200);
    } finally {
      await redis.start();
    }
    await eventually('the API to answer again after Redis is back', async () => (await get(failClosed, '/v2/sandboxes', { from, key: team.apiKey })).status === 200, {
      timeoutMs: 20_000,
      intervalMs: 500,
    });
  });
});
