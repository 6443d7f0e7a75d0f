import 'reflect-metadata';
import { sandboxAddressOf } from './sandbox-address';

describe('sandboxAddressOf', () => {
  const domain = 'kiln.example';

  it.each([
    [{ 'e2b-sandbox-id': 'abc123', 'e2b-sandbox-port': '49983' }, { sandboxId: 'abc123', port: 49983 }],
    [{ 'e2b-sandbox-id': 'abc123' }, { sandboxId: 'abc123', port: 49983 }],
    [{ host: '8080-abc123.kiln.example' }, { sandboxId: 'abc123', port: 8080 }],
    [{ host: '8080-abc123.KILN.example:443' }, { sandboxId: 'abc123', port: 8080 }],
    // Headers win over the Host (E2B_SANDBOX_URL clients send both when a domain is set too).
    [{ host: '1-zzz.kiln.example', 'e2b-sandbox-id': 'abc123', 'e2b-sandbox-port': '3000' }, { sandboxId: 'abc123', port: 3000 }],
  ])('routes %j', (headers, address) => {
    expect(sandboxAddressOf(headers, domain)).toEqual({ ok: true, address });
  });

  it.each([
    [{ 'e2b-sandbox-id': 'ABC' }, 'e2b-sandbox-id'],
    [{ 'e2b-sandbox-id': '' }, 'e2b-sandbox-id'],
    [{ 'e2b-sandbox-id': 'abc', 'e2b-sandbox-port': '0' }, 'e2b-sandbox-port'],
    [{ 'e2b-sandbox-id': 'abc', 'e2b-sandbox-port': '65536' }, 'e2b-sandbox-port'],
    [{ 'e2b-sandbox-id': 'abc', 'e2b-sandbox-port': '80x' }, 'e2b-sandbox-port'],
    [{ host: 'abc.kiln.example' }, 'host'],
    [{ host: '99999-abc.kiln.example' }, 'port'],
  ])('refuses %j naming %s', (headers, named) => {
    const result = sandboxAddressOf(headers, domain);
    expect(result.ok).toBe(false);
    expect(!result.ok && result.reason).toContain(named);
  });

  it('reports no reason when the request names no sandbox at all', () => {
    expect(sandboxAddressOf({ host: 'api.other.example' }, domain)).toEqual({ ok: false, reason: undefined });
    expect(sandboxAddressOf({}, domain)).toEqual({ ok: false, reason: undefined });
  });
});
