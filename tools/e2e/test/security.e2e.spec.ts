import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Client as PgClient } from 'pg';
import { CommandExitError, Sandbox } from 'e2b';
import { fileSignature } from '@kiln/contracts/envd-auth';
import { eventually } from '@kiln/testing';
import { status as grpcStatus } from '@grpc/grpc-js';
import { hostAgentClient } from '../harness/host-agent-client';
import { hostProxyFetch, internalTlsFiles } from '../harness/internal-tls';
import { E2E_NAMESERVER, StackInfo, readStack, restartHostAgentAfterKill } from '../harness/stack-harness';
import { OPENED_PRIVATE_HOST, OTHER_PUBLIC_HOST, PRIVATE_HOST, PUBLIC_HOST, PUBLIC_NAME, TestInternet } from '../harness/test-internet';

const ENVD_PORT = 49983;

type SdkOptions = { apiKey: string; apiUrl: string; sandboxUrl: string; domain: string };

/** Runs a shell command in the sandbox and returns its stdout whatever its exit code. */
async function shell(sandbox: Sandbox, command: string, user: 'root' | 'user' = 'root'): Promise<string> {
  try {
    return (await sandbox.commands.run(command, { user, timeoutMs: 60_000 })).stdout;
  } catch (error) {
    if (error instanceof CommandExitError) return error.stdout;
    throw error;
  }
}

/**
 * One HTTP(S) request from inside the sandbox with curl, as root. `name` is sent as the Host (and, for https, the TLS
 * server name) while the connection goes to `address`. Returns the body on success, undefined when it failed.
 */
async function fetchFromSandbox(sandbox: Sandbox, scheme: 'http' | 'https', address: string, name = address): Promise<string | undefined> {
  const port = scheme === 'http' ? 80 : 443;
  const resolve = name === address ? '' : `--resolve ${name}:${port}:${address}`;
  const out = await shell(sandbox, `curl -sk -m 4 ${resolve} ${scheme}://${name}/; echo " rc=$?"`);
  const match = /^(.*) rc=(\d+)\s*$/s.exec(out);
  return match && match[2] === '0' ? match[1].trim() : undefined;
}

/**
 * TCP connects from inside the sandbox to every target at once (one python3 process: a shell per probe costs a
 * process start each, which is slow under TCG); returns the ones that opened.
 */
async function openFromSandbox(sandbox: Sandbox, targets: string[]): Promise<string[]> {
  const script = [
    'import socket, sys',
    'from concurrent.futures import ThreadPoolExecutor',
    'def probe(target):',
    "    ip, port = target.rsplit(':', 1)",
    '    s = socket.socket()',
    '    s.settimeout(2)',
    '    try:',
    '        s.connect((ip, int(port)))',
    '        return target',
    '    except OSError:',
    '        return None',
    '    finally:',
    '        s.close()',
    'with ThreadPoolExecutor(64) as pool:',
    '    for opened in pool.map(probe, sys.argv[1:]):',
    "        if opened: print('open ' + opened)",
  ].join('\n');
  await sandbox.files.write('/tmp/kiln-probe.py', script);
  const out = await shell(sandbox, `python3 /tmp/kiln-probe.py ${targets.join(' ')}`);
  return out.split('\n').filter((l) => l.startsWith('open ')).map((l) => l.slice(5));
}

/** A Prometheus counter's value (summed over the series whose labels include `labels`). */
async function counter(url: string, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`) && l.includes(labels))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

/** The host's own IPv4 addresses (as a sandbox could aim at them), loopback aside. */
function hostAddresses(): string[] {
  const links = JSON.parse(execFileSync('ip', ['-j', '-4', 'addr', 'show'], { encoding: 'utf8' })) as Array<{ addr_info: Array<{ local: string }> }>;
  return [...new Set(links.flatMap((l) => l.addr_info.map((a) => a.local)).filter((a) => !a.startsWith('127.')))];
}

/**
 * security-e2e: the sandbox trust boundary (issue 9), through the official SDK and raw HTTP against the whole stack
 * with real VMs. Every boundary check comes with a control that succeeds where it should, so a broken probe cannot
 * pass for a closed door. Network targets are only this machine's own addresses and test hosts in a namespace the
 * suite creates (documentation and test ranges).
 */
describe('security-e2e: sandbox trust boundary', () => {
  let stack: StackInfo;
  let opts: SdkOptions;
  let internet: TestInternet;
  /** The host agent's proxy only answers the gateway's certificate (internal mTLS): the suite presents it. */
  let hostProxy: ReturnType<typeof hostProxyFetch>;
  const created: Sandbox[] = [];

  const create = async (extra: Parameters<typeof Sandbox.create>[1] = {}) => {
    const sandbox = await Sandbox.create('base', { ...opts, timeoutMs: 300_000, ...extra });
    created.push(sandbox);
    return sandbox;
  };

  /** Raw request to a traffic listener, addressed to the sandbox by headers. */
  const raw = (base: string, sandboxId: string, path: string, init: RequestInit & { port?: number } = {}) =>
    hostProxy.fetch(`${base}${path}`, {
      ...init,
      headers: { 'E2b-Sandbox-Id': sandboxId, 'E2b-Sandbox-Port': String(init.port ?? ENVD_PORT), ...(init.headers as Record<string, string>) },
    });

  beforeAll(async () => {
    stack = readStack();
    opts = { apiKey: stack.apiKey, apiUrl: stack.apiUrl, sandboxUrl: stack.sandboxUrl, domain: stack.domain };
    hostProxy = hostProxyFetch(stack.internalTlsDir);
    // The stack's sandboxes resolve through E2E_NAMESERVER: the test internet serves DNS there.
    internet = await TestInternet.start({ dnsServerAt: E2E_NAMESERVER });
  });

  afterAll(async () => {
    await Promise.all(created.map((s) => s.kill().catch(() => undefined)));
    await internet?.stop();
    await hostProxy?.close();
  });

  describe('the internal plane: a host agent answers only the control plane’s certificates', () => {
    it('gRPC: refuses a client without a certificate and a host agent’s certificate; the scheduler’s gets through', async () => {
      const call = async (tls?: ReturnType<typeof internalTlsFiles>) => {
        const agent = hostAgentClient(stack.hostAgent.grpcAddress, tls);
        try {
          return await agent.listSandboxes().then((r) => ({ listed: Array.isArray(r.sandboxes) }), (e: { code: number }) => ({ code: e.code }));
        } finally {
          agent.close();
        }
      };
      expect(await call(undefined)).toEqual({ code: grpcStatus.UNAVAILABLE });
      // Signed by the stack's internal CA, but a host agent is not a caller of host agents.
      expect(await call(internalTlsFiles(stack.internalTlsDir, 'host-agent'))).toEqual({ code: grpcStatus.PERMISSION_DENIED });
      expect(await call(internalTlsFiles(stack.internalTlsDir, 'scheduler'))).toEqual({ listed: true });
    });

    it('proxy: refuses plain HTTP and a client without a certificate, answers the scheduler 403; the gateway reaches the routing', async () => {
      const url = `${stack.hostAgent.proxyUrl}/health`;
      const headers = { 'E2b-Sandbox-Id': 'nosuchsandbox', 'E2b-Sandbox-Port': String(ENVD_PORT) };
      expect(url.startsWith('https://')).toBe(true);
      await expect(fetch(url.replace('https:', 'http:'), { headers })).rejects.toThrow();
      const withoutCertificate = hostProxyFetch(stack.internalTlsDir, null);
      try {
        // TLS with the internal CA trusted but no client certificate: the handshake is refused.
        await expect(withoutCertificate.fetch(url, { headers })).rejects.toThrow();
      } finally {
        await withoutCertificate.close();
      }
      const asScheduler = hostProxyFetch(stack.internalTlsDir, 'scheduler');
      try {
        const refused = await asScheduler.fetch(url, { headers });
        expect({ status: refused.status, body: await refused.json() }).toEqual({
          status: 403,
          body: { code: 403, message: expect.stringContaining('spiffe://kiln/scheduler may not call this service') },
        });
      } finally {
        await asScheduler.close();
      }
      const routed = await hostProxy.fetch(url, { headers });
      expect({ status: routed.status, body: await routed.json() }).toEqual({
        status: 502,
        body: { code: 502, message: 'sandbox nosuchsandbox is not running on this host' },
      });
    });
  });

  describe('envd access token on every sandbox', () => {
    let sandbox: Sandbox;
    let token: string;

    beforeAll(async () => {
      // Exactly what the SDK sends by default: no `secure` field.
      const response = await fetch(`${stack.apiUrl}/sandboxes`, {
        method: 'POST',
        headers: { 'X-API-Key': stack.apiKey, 'content-type': 'application/json' },
        body: JSON.stringify({ templateID: 'base', timeout: 300, envVars: { SECRET_FROM_CREATE: 'only-for-the-owner' } }),
      });
      expect(response.status).toBe(201);
      const body = (await response.json()) as { sandboxID: string; envdAccessToken?: string; trafficAccessToken: string | null };
      expect(body.envdAccessToken).toEqual(expect.stringMatching(/^[A-Za-z0-9_-]{32,}$/));
      expect(body.trafficAccessToken).toBeNull();
      token = body.envdAccessToken!;
      sandbox = await Sandbox.connect(body.sandboxID, opts);
      created.push(sandbox);
    });

    it('lets the owner in (control): the SDK with the token runs commands and reads the env', async () => {
      expect((await sandbox.commands.run('echo $SECRET_FROM_CREATE')).stdout).toBe('only-for-the-owner\n');
      const envs = await raw(stack.sandboxUrl, sandbox.sandboxId, '/envs', { headers: { 'X-Access-Token': token } });
      expect(envs.status).toBe(200);
      expect(await envs.json()).toMatchObject({ SECRET_FROM_CREATE: 'only-for-the-owner' });
    });

    it('stores the token nowhere in plaintext: not in the database, not in the host agent’s record', async () => {
      const db = new PgClient({ connectionString: stack.databaseUrl });
      await db.connect();
      try {
        const { rows } = await db.query('select row_to_json(s)::text as row from sandboxes s where id = $1', [sandbox.sandboxId]);
        expect(rows).toHaveLength(1);
        expect(rows[0].row).not.toContain(token);
      } finally {
        await db.end();
      }
      const record = readFileSync(join(stack.dataDir, 'sandboxes', sandbox.sandboxId, 'sandbox.json'), 'utf8');
      expect(JSON.parse(record)).toMatchObject({ sandboxId: sandbox.sandboxId, envdAccessTokenSealed: expect.stringMatching(/^v1\./) });
      expect(record).not.toContain(token);
    });

    it('refuses envd calls without a valid token at the gateway and at the host proxy; the guest never sees them', async () => {
      const forwardedBefore = await counter(stack.hostAgent.httpUrl, 'kiln_agent_proxy_requests_total', 'outcome="forwarded"');
      const refusedBefore = await counter(stack.apiUrl, 'kiln_gateway_traffic_requests_total', 'outcome="refused_401"');
      const attempts: Array<[string, RequestInit]> = [
        ['/envs', {}],
        ['/files?path=/etc/hostname', {}],
        ['/files?path=/tmp/planted', { method: 'POST', body: 'x', headers: { 'content-type': 'application/octet-stream' } }],
        [
          '/process.Process/Start',
          {
            method: 'POST',
            headers: { 'content-type': 'application/json', authorization: `Basic ${Buffer.from('root:').toString('base64')}` },
            body: JSON.stringify({ process: { cmd: '/bin/touch', args: ['/tmp/pwned'] } }),
          },
        ],
        ['/envs', { headers: { 'X-Access-Token': 'not-the-token' } }],
        ['/files?path=/etc/hostname&signature=v1_forged', {}],
      ];
      for (const base of [stack.sandboxUrl, stack.hostAgent.proxyUrl]) {
        for (const [path, init] of attempts) {
          const response = await raw(base, sandbox.sandboxId, path, init);
          expect({ base, path, status: response.status }).toEqual({ base, path, status: 401 });
          expect(await response.json()).toMatchObject({ code: 401, message: expect.any(String) });
        }
      }
      expect(await counter(stack.hostAgent.httpUrl, 'kiln_agent_proxy_requests_total', 'outcome="forwarded"')).toBe(forwardedBefore);
      const refusedAfter = await counter(stack.apiUrl, 'kiln_gateway_traffic_requests_total', 'outcome="refused_401"');
      expect(refusedAfter - refusedBefore).toBe(attempts.length);
      expect((await sandbox.commands.run('test -e /tmp/pwned -o -e /tmp/planted; echo $?')).stdout).toBe('1\n');
    });

    it('never forwards /init from outside, and the guest refuses it from the sandbox’s own users; the owner keeps working', async () => {
      for (const base of [stack.sandboxUrl, stack.hostAgent.proxyUrl]) {
        for (const headers of [{}, { 'X-Access-Token': token }] as Array<Record<string, string>>) {
          const response = await raw(base, sandbox.sandboxId, '/init', {
            method: 'POST',
            headers: { 'content-type': 'application/json', ...headers },
            body: JSON.stringify({ accessToken: 'taken-over' }),
          });
          expect(response.status).toBe(403);
        }
      }
      for (const user of ['user', 'root'] as const) {
        const status = await shell(
          sandbox,
          `curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' -d '{"accessToken":"taken-over"}' http://127.0.0.1:${ENVD_PORT}/init`,
          user,
        );
        expect({ user, status }).toEqual({ user, status: '401' });
      }
      expect((await sandbox.commands.run('echo still-mine')).stdout).toBe('still-mine\n');
      const stolen = await raw(stack.sandboxUrl, sandbox.sandboxId, '/envs', { headers: { 'X-Access-Token': 'taken-over' } });
      expect(stolen.status).toBe(401);
    });

    it('serves signed file URLs with and without expiry; a tampered or expired signature is refused', async () => {
      await sandbox.files.write('/home/user/signed.txt', 'signed-content');
      const get = (url: string) => fetch(url, { headers: { 'E2b-Sandbox-Id': sandbox.sandboxId, 'E2b-Sandbox-Port': String(ENVD_PORT) } });
      const plain = await sandbox.downloadUrl('/home/user/signed.txt');
      expect(new URL(plain).searchParams.get('signature')).toMatch(/^v1_/);
      const expiring = await sandbox.downloadUrl('/home/user/signed.txt', { useSignatureExpiration: 120 });
      expect(new URL(expiring).searchParams.get('signature_expiration')).toMatch(/^\d+$/);
      for (const url of [plain, expiring]) {
        const response = await get(url);
        expect(response.status).toBe(200);
        expect(await response.text()).toBe('signed-content');
      }
      const tampered = new URL(plain);
      tampered.searchParams.set('path', '/etc/shadow');
      expect((await get(tampered.toString())).status).toBe(401);
      const expired = new URL(plain);
      const past = Math.floor(Date.now() / 1000) - 60;
      expired.searchParams.set('signature', fileSignature('/home/user/signed.txt', 'read', expired.searchParams.get('username') ?? '', token, past));
      expired.searchParams.set('signature_expiration', String(past));
      expect((await get(expired.toString())).status).toBe(401);

      const upload = await sandbox.uploadUrl('/home/user/uploaded.txt');
      const form = new FormData();
      form.append('file', new Blob(['uploaded-by-url']), 'uploaded.txt');
      const uploaded = await fetch(upload, { method: 'POST', body: form, headers: { 'E2b-Sandbox-Id': sandbox.sandboxId, 'E2b-Sandbox-Port': String(ENVD_PORT) } });
      expect(uploaded.status).toBe(200);
      expect(await sandbox.files.read('/home/user/uploaded.txt')).toBe('uploaded-by-url');
    });
  });

  describe('what a sandbox reaches as root', () => {
    it('reaches a public test host (control) but no private-range host, no host service and no other sandbox', async () => {
      const [a, b] = await Promise.all([create(), create()]);
      expect(await fetchFromSandbox(a, 'http', PUBLIC_HOST)).toBe(`host=${PUBLIC_HOST} at=${PUBLIC_HOST}`);
      expect(await openFromSandbox(a, [`${PUBLIC_HOST}:80`])).toEqual([`${PUBLIC_HOST}:80`]);
      expect(await fetchFromSandbox(a, 'http', PRIVATE_HOST)).toBeUndefined();

      const natsPort = new URL(stack.natsUrl).port;
      const ports = [
        ...Object.values(stack.httpPorts),
        new URL(stack.apiUrl).port,
        new URL(stack.sandboxUrl).port,
        stack.hostAgent.grpcAddress.split(':')[1],
        new URL(stack.hostAgent.proxyUrl).port,
        natsPort,
        4222,
        5432,
        6379,
      ].map(String);
      const targets = ['169.254.0.22', ...hostAddresses()].flatMap((ip) => ports.map((port) => `${ip}:${port}`));
      expect(await openFromSandbox(a, targets)).toEqual([]);

      await b.commands.run('python3 -m http.server 8000', { background: true });
      const served = await eventually('B serving on 8000 (control, through the gateway)', async () => {
        const r = await raw(stack.sandboxUrl, b.sandboxId, '/', { port: 8000 }).catch(() => undefined);
        return r?.status === 200 ? r : undefined;
      });
      expect(served.status).toBe(200);
      const bSlot = (await hostAgentInfo(stack, b.sandboxId)).guestAddress;
      expect(await openFromSandbox(a, [`${bSlot}:8000`, `${bSlot}:${ENVD_PORT}`])).toEqual([]);
    });
  });

  describe('egress policy (E2B fields)', () => {
    it('allowInternetAccess:false blocks the public host and shows in the info; DNS goes to the platform resolver only', async () => {
      const sandbox = await create({ allowInternetAccess: false });
      expect(await fetchFromSandbox(sandbox, 'http', PUBLIC_HOST)).toBeUndefined();
      expect((await shell(sandbox, `getent hosts ${PUBLIC_NAME}`)).trim()).toMatch(new RegExp(`^${PUBLIC_HOST.replace(/\./g, '\\.')}\\s+${PUBLIC_NAME}$`));
      // Port 53 anywhere but the platform's resolvers is refused, whatever the rules; port 7 on that host is the control.
      const open = await create();
      expect(await openFromSandbox(open, [`${PUBLIC_HOST}:53`, `${PUBLIC_HOST}:7`])).toEqual([`${PUBLIC_HOST}:7`]);
      const info = await sandbox.getInfo();
      expect(info.allowInternetAccess).toBe(false);
      expect(info.network?.denyOut).toEqual(['0.0.0.0/0']);
      expect(await fetchFromSandbox(open, 'http', PUBLIC_HOST)).toContain('host='); // control
    });

    it('denyOut blocks the listed address and leaves the others; allowOut opens one under a deny-all', async () => {
      const denied = await create({ network: { denyOut: [`${PUBLIC_HOST}/32`] } });
      expect(await fetchFromSandbox(denied, 'http', PUBLIC_HOST)).toBeUndefined();
      expect(await fetchFromSandbox(denied, 'http', OTHER_PUBLIC_HOST)).toContain(`at=${OTHER_PUBLIC_HOST}`);

      const allowed = await create({ network: { allowOut: [PUBLIC_HOST], denyOut: ['0.0.0.0/0'] } });
      expect(await fetchFromSandbox(allowed, 'http', PUBLIC_HOST)).toContain(`at=${PUBLIC_HOST}`);
      expect(await fetchFromSandbox(allowed, 'http', OTHER_PUBLIC_HOST)).toBeUndefined();
      // No user rule opens the platform floor.
      const floor = await create({ network: { allowOut: ['10.0.0.0/8', '0.0.0.0/0'] } });
      expect(await fetchFromSandbox(floor, 'http', PRIVATE_HOST)).toBeUndefined();
      expect(await fetchFromSandbox(floor, 'http', PUBLIC_HOST)).toContain('host='); // control
    });

    it('lets a domain allowed by name through (HTTP Host, TLS SNI) while another name on the same address stays blocked', async () => {
      const sandbox = await create({ network: { allowOut: ['allowed.test', '*.wild.test'], denyOut: ['0.0.0.0/0'] } });
      expect(await fetchFromSandbox(sandbox, 'http', PUBLIC_HOST, 'allowed.test')).toBe(`host=allowed.test at=${PUBLIC_HOST}`);
      expect(await fetchFromSandbox(sandbox, 'https', PUBLIC_HOST, 'allowed.test')).toBe(`sni=allowed.test at=${PUBLIC_HOST}`);
      expect(await fetchFromSandbox(sandbox, 'https', PUBLIC_HOST, 'api.wild.test')).toBe(`sni=api.wild.test at=${PUBLIC_HOST}`);
      expect(await fetchFromSandbox(sandbox, 'http', PUBLIC_HOST, 'blocked.test')).toBeUndefined();
      expect(await fetchFromSandbox(sandbox, 'https', PUBLIC_HOST, 'blocked.test')).toBeUndefined();
      expect(await fetchFromSandbox(sandbox, 'https', PUBLIC_HOST, 'wild.test')).toBeUndefined();
      expect(await fetchFromSandbox(sandbox, 'http', PUBLIC_HOST)).toBeUndefined();
      // A name cannot carry traffic to the platform floor either.
      expect(await fetchFromSandbox(sandbox, 'http', PRIVATE_HOST, 'allowed.test')).toBeUndefined();
    });

    it('updateNetwork closes and reopens a running sandbox’s egress, and the info follows', async () => {
      const sandbox = await create();
      expect(await fetchFromSandbox(sandbox, 'http', PUBLIC_HOST)).toContain('host=');
      await sandbox.updateNetwork({ denyOut: ['0.0.0.0/0'] });
      expect(await fetchFromSandbox(sandbox, 'http', PUBLIC_HOST)).toBeUndefined();
      expect((await sandbox.getInfo()).network?.denyOut).toEqual(['0.0.0.0/0']);
      await sandbox.updateNetwork({ allowOut: [`${PUBLIC_HOST}/32`], denyOut: ['0.0.0.0/0'] });
      expect(await fetchFromSandbox(sandbox, 'http', PUBLIC_HOST)).toContain('host=');
      expect(await fetchFromSandbox(sandbox, 'http', OTHER_PUBLIC_HOST)).toBeUndefined();
      await sandbox.updateNetwork({});
      expect(await fetchFromSandbox(sandbox, 'http', OTHER_PUBLIC_HOST)).toContain('host=');
      expect((await sandbox.getInfo()).network).toMatchObject({ allowOut: [], denyOut: [] });
    });

    it('reaches a private range the operator opened (KILN_EGRESS_OPEN_RANGES) but not the rest of the floor', async () => {
      const sandbox = await create();
      expect(await fetchFromSandbox(sandbox, 'http', OPENED_PRIVATE_HOST)).toContain(`at=${OPENED_PRIVATE_HOST}`);
      expect(await fetchFromSandbox(sandbox, 'http', PRIVATE_HOST)).toBeUndefined();
    });

    it('keeps every sandbox’s policy after the host agent is killed and restarted', async () => {
      const closed = await create({ allowInternetAccess: false });
      const byName = await create({ network: { allowOut: ['allowed.test'], denyOut: ['0.0.0.0/0'] } });
      expect(await fetchFromSandbox(closed, 'http', PUBLIC_HOST)).toBeUndefined();
      stack = await restartHostAgentAfterKill(stack);
      expect(await fetchFromSandbox(closed, 'http', PUBLIC_HOST)).toBeUndefined();
      expect(await fetchFromSandbox(byName, 'http', PUBLIC_HOST, 'allowed.test')).toContain('host=allowed.test');
      expect(await fetchFromSandbox(byName, 'http', PUBLIC_HOST, 'blocked.test')).toBeUndefined();
      const info = await hostAgentInfo(stack, closed.sandboxId);
      expect(info.egress).toEqual({ allowOut: [], denyOut: ['0.0.0.0/0'] });
      expect((await closed.getInfo()).network?.denyOut).toEqual(['0.0.0.0/0']);
    });
  });

  describe('user ports', () => {
    it('allowPublicTraffic:false needs the traffic token (403 without, 200 with), and maskRequestHost sets the Host', async () => {
      const sandbox = await create({ network: { allowPublicTraffic: false, maskRequestHost: 'masked.internal:${PORT}' } });
      expect(sandbox.trafficAccessToken).toEqual(expect.any(String));
      await sandbox.files.write(
        '/tmp/echo_host.py',
        [
          'from http.server import BaseHTTPRequestHandler, HTTPServer',
          'class H(BaseHTTPRequestHandler):',
          '    def do_GET(self):',
          "        body = ('host=%s' % self.headers.get('Host')).encode()",
          '        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)',
          '    def log_message(self, *args): pass',
          "HTTPServer(('0.0.0.0', 8000), H).serve_forever()",
        ].join('\n'),
      );
      await sandbox.commands.run('python3 /tmp/echo_host.py', { background: true });
      const withToken = await eventually('the sandbox serving on 8000 (with the traffic token)', async () => {
        const r = await raw(stack.sandboxUrl, sandbox.sandboxId, '/', { port: 8000, headers: { 'e2b-traffic-access-token': sandbox.trafficAccessToken! } }).catch(() => undefined);
        return r?.status === 200 ? r : undefined;
      });
      expect(await withToken.text()).toBe('host=masked.internal:8000');
      expect((await raw(stack.sandboxUrl, sandbox.sandboxId, '/', { port: 8000 })).status).toBe(403);
      expect((await raw(stack.sandboxUrl, sandbox.sandboxId, '/', { port: 8000, headers: { 'e2b-traffic-access-token': 'wrong' } })).status).toBe(403);
      // The envd port keeps its own token and needs no traffic token.
      expect((await sandbox.commands.run('echo envd-ok')).stdout).toBe('envd-ok\n');
      const info = await sandbox.getInfo();
      expect(info.network).toMatchObject({ allowPublicTraffic: false, maskRequestHost: 'masked.internal:${PORT}' });
    });
  });
});

async function hostAgentInfo(stack: StackInfo, sandboxId: string) {
  const agent = hostAgentClient(stack.hostAgent.grpcAddress, internalTlsFiles(stack.internalTlsDir, 'scheduler'));
  try {
    return await agent.getSandbox({ sandboxId });
  } finally {
    agent.close();
  }
}
