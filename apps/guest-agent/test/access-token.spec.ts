import { Code, ConnectError } from '@connectrpc/connect';
import { fileSignature } from '../src/auth/access-token';
import { RunningAgent } from './support/running-agent';

const TOKEN = 'kiln-test-token-7f3a';

/** Every route envd serves, with a request that would succeed given the right token. */
const ROUTES: Array<{ name: string; method: string; path: string; body?: string; type?: string }> = [
  { name: 'metrics', method: 'GET', path: '/metrics' },
  { name: 'envs', method: 'GET', path: '/envs' },
  { name: 'download', method: 'GET', path: '/files?path=/etc/hostname&username=root' },
  { name: 'upload', method: 'POST', path: '/files?path=/tmp/kiln-auth-probe&username=root', body: 'x', type: 'application/octet-stream' },
  { name: 'init', method: 'POST', path: '/init', body: '{"envVars":{"A":"1"}}', type: 'application/json' },
  { name: 'process List', method: 'POST', path: '/process.Process/List', body: '{}', type: 'application/json' },
  { name: 'filesystem Stat', method: 'POST', path: '/filesystem.Filesystem/Stat', body: '{"path":"/tmp"}', type: 'application/json' },
];

describe('access token', () => {
  let agent: RunningAgent;

  beforeAll(async () => {
    agent = await RunningAgent.start();
    expect((await agent.init({ accessToken: TOKEN })).status).toBe(204);
  });

  afterAll(async () => {
    await agent.stop();
  });

  const call = (route: (typeof ROUTES)[number], token?: string) =>
    fetch(`${agent.url}${route.path}`, {
      method: route.method,
      headers: { ...(route.type ? { 'content-type': route.type } : {}), ...(token !== undefined ? { 'x-access-token': token } : {}) },
      body: route.body,
    });

  it.each(ROUTES)('$name: 401 JSON without the token and with a wrong one, success with the right one', async (route) => {
    for (const token of [undefined, 'wrong-token', '']) {
      const res = await call(route, token);
      expect(res.status).toBe(401);
      expect(res.headers.get('content-type')).toContain('application/json');
      expect(await res.json()).toHaveProperty('message');
    }
    const ok = await call(route, TOKEN);
    expect(ok.status).toBeLessThan(300);
  });

  it('leaves /health open, as envd does', async () => {
    expect((await fetch(`${agent.url}/health`)).status).toBe(204);
  });

  it('rejects Connect streams and unary calls with Unauthenticated for both transports', async () => {
    for (const httpVersion of ['1.1', '2'] as const) {
      const wrong = agent.processClient({ httpVersion, token: 'nope' });
      const unary = await wrong.list({}).catch((e: unknown) => ConnectError.from(e));
      expect((unary as ConnectError).code).toBe(Code.Unauthenticated);
      const stream = await (async () => {
        for await (const _ of wrong.start({ process: { cmd: 'true', args: [], envs: {} } })) {
          // no events expected
        }
      })().catch((e: unknown) => ConnectError.from(e));
      expect((stream as ConnectError).code).toBe(Code.Unauthenticated);
      await expect(agent.processClient({ httpVersion, token: TOKEN }).list({})).resolves.toBeDefined();
    }
  });

  it('accepts signed file URLs (with and without expiry) and refuses bad or expired signatures', async () => {
    const path = '/etc/hostname';
    const url = (sig: string, extra = '') => `${agent.url}/files?path=${encodeURIComponent(path)}&username=root&signature=${encodeURIComponent(sig)}${extra}`;
    expect((await fetch(url(fileSignature(path, 'read', 'root', TOKEN)))).status).toBe(200);
    const future = Math.floor(Date.now() / 1000) + 60;
    expect((await fetch(url(fileSignature(path, 'read', 'root', TOKEN, future), `&signature_expiration=${future}`))).status).toBe(200);
    const past = Math.floor(Date.now() / 1000) - 60;
    expect((await fetch(url(fileSignature(path, 'read', 'root', TOKEN, past), `&signature_expiration=${past}`))).status).toBe(401);
    expect((await fetch(url(fileSignature(path, 'write', 'root', TOKEN)))).status).toBe(401);
    expect((await fetch(url(fileSignature(path, 'read', 'root', 'other-token')))).status).toBe(401);
  });

  it('lets only a caller who knows the token re-run /init, and keeps the token', async () => {
    expect((await agent.init({ accessToken: 'takeover' })).status).toBe(401);
    expect((await agent.init({ accessToken: TOKEN, envVars: { B: '2' } })).status).toBe(204);
    expect((await agent.init({ envVars: { C: '3' } }, TOKEN)).status).toBe(204);
    const envs = await (await fetch(`${agent.url}/envs`, { headers: { 'x-access-token': TOKEN } })).json();
    expect(envs).toMatchObject({ B: '2', C: '3' });
    expect(agent.isAlive).toBe(true);
  });
});
