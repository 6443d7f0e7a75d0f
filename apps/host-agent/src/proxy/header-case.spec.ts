import { once } from 'node:events';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { canonicalHeaderName, canonicaliseHeaderNames } from './header-case';

describe('canonicalHeaderName', () => {
  it.each([
    ['host', 'Host'],
    ['x-access-token', 'X-Access-Token'],
    ['E2B-SANDBOX-ID', 'E2b-Sandbox-Id'],
    ['content-type', 'Content-Type'],
    ['x-forwarded-for', 'X-Forwarded-For'],
    ['Already-Canonical', 'Already-Canonical'],
  ])('%s → %s', (name, canonical) => {
    expect(canonicalHeaderName(name)).toBe(canonical);
  });
});

describe('canonicaliseHeaderNames', () => {
  it('sends canonical names on the wire, values and multi-value headers unchanged', async () => {
    const server = createServer((req, res) => res.end(JSON.stringify(req.rawHeaders)));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      const { port } = server.address() as AddressInfo;
      const raw = await new Promise<string[]>((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port, path: '/', headers: { host: 'custom-host.example.com:8080', 'x-access-token': 't', 'x-multi': ['a', 'b'] } }, (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve(JSON.parse(body)));
        });
        req.on('error', reject);
        canonicaliseHeaderNames(req);
        req.end();
      });
      expect(raw).toEqual(expect.arrayContaining(['Host', 'custom-host.example.com:8080', 'X-Access-Token', 't', 'X-Multi', 'a', 'X-Multi', 'b']));
      expect(raw).not.toContain('host');
    } finally {
      server.close();
    }
  });
});
