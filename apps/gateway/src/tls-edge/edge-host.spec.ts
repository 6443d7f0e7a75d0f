import { EdgeRequest, edgeRequestRoute, edgeRouteOf, normalizedHostName } from './edge-host';

const domain = 'kiln.localhost';

describe('normalizedHostName', () => {
  it.each([
    ['API.Kiln.Localhost', 'api.kiln.localhost'],
    ['api.kiln.localhost:443', 'api.kiln.localhost'],
    ['api.kiln.localhost.', 'api.kiln.localhost'],
    ['api.kiln.localhost.:8443', 'api.kiln.localhost'],
    ['[::1]:443', '[::1]'],
    ['[::1]', '[::1]'],
  ])('%s is %s', (value, name) => expect(normalizedHostName(value)).toBe(name));
});

describe('edgeRouteOf', () => {
  it.each([
    ['api.kiln.localhost', { kind: 'api' }],
    ['API.kiln.localhost:443', { kind: 'api' }],
    ['49983-abc123.kiln.localhost', { kind: 'sandbox', address: { sandboxId: 'abc123', port: 49983 } }],
    ['8080-abc123.KILN.localhost.', { kind: 'sandbox', address: { sandboxId: 'abc123', port: 8080 } }],
  ])('serves %s', (name, route) => expect(edgeRouteOf(name, domain)).toEqual(route));

  it.each([
    'kiln.localhost',
    'sandbox.kiln.localhost',
    'api.other.localhost',
    'api.kiln.localhost.evil.example',
    'evil-api.kiln.localhost',
    '0-abc.kiln.localhost',
    '99999-abc.kiln.localhost',
    '49983-ABC_1.kiln.localhost',
    '49983-abc.x.kiln.localhost',
    'localhost',
    '127.0.0.1',
    '[::1]',
  ])('serves nothing at %s', (name) => expect(edgeRouteOf(name, domain)).toBeUndefined());
});

describe('edgeRequestRoute', () => {
  const request = (overrides: Partial<EdgeRequest> & { host?: string }): EdgeRequest => {
    const { host, ...rest } = overrides;
    return { servername: 'api.kiln.localhost', url: '/sandboxes', headers: { host: host ?? 'api.kiln.localhost' }, ...rest };
  };

  it('routes a request whose Host is its connection name, with or without the port', () => {
    expect(edgeRequestRoute(request({}), domain)).toEqual({ route: { kind: 'api' } });
    expect(edgeRequestRoute(request({ host: 'api.kiln.localhost:443' }), domain)).toEqual({ route: { kind: 'api' } });
    expect(
      edgeRequestRoute(request({ servername: '49983-abc123.kiln.localhost', host: '49983-abc123.kiln.localhost', url: '/files?path=x' }), domain),
    ).toEqual({ route: { kind: 'sandbox', address: { sandboxId: 'abc123', port: 49983 } } });
  });

  it('refuses a Host other than the TLS server name with 421, both ways round', () => {
    const toSandbox = edgeRequestRoute(request({ host: '49983-abc123.kiln.localhost' }), domain);
    expect(toSandbox).toEqual({ refusal: { status: 421, message: expect.stringContaining('does not match the TLS server name api.kiln.localhost') } });
    const toApi = edgeRequestRoute(request({ servername: '49983-abc123.kiln.localhost' }), domain);
    expect(toApi).toEqual({ refusal: expect.objectContaining({ status: 421 }) });
    const toOtherSandbox = edgeRequestRoute(request({ servername: '49983-abc123.kiln.localhost', host: '49983-zzz999.kiln.localhost' }), domain);
    expect(toOtherSandbox).toEqual({ refusal: expect.objectContaining({ status: 421 }) });
  });

  it('refuses a connection without SNI (421) and a request without Host (400)', () => {
    expect(edgeRequestRoute(request({ servername: false }), domain)).toEqual({ refusal: expect.objectContaining({ status: 421, message: expect.stringContaining('SNI') }) });
    expect(edgeRequestRoute(request({ servername: undefined }), domain)).toEqual({ refusal: expect.objectContaining({ status: 421 }) });
    expect(edgeRequestRoute({ servername: 'api.kiln.localhost', url: '/', headers: {} }, domain)).toEqual({
      refusal: expect.objectContaining({ status: 400, message: expect.stringContaining('Host') }),
    });
  });

  it('refuses names nothing serves even when SNI and Host agree on them', () => {
    expect(edgeRequestRoute(request({ servername: 'kiln.localhost', host: 'kiln.localhost' }), domain)).toEqual({
      refusal: expect.objectContaining({ status: 421, message: expect.stringContaining('not served here') }),
    });
  });

  it('refuses absolute-form and asterisk request targets', () => {
    expect(edgeRequestRoute(request({ url: 'https://49983-abc123.kiln.localhost/files' }), domain)).toEqual({ refusal: expect.objectContaining({ status: 400 }) });
    expect(edgeRequestRoute(request({ url: '*' }), domain)).toEqual({ refusal: expect.objectContaining({ status: 400 }) });
  });

  it.each(['/metrics', '/metrics?x=1', '/metrics/', '//metrics', '/METRICS', '/%6detrics'])('does not serve the API scrape endpoint %s publicly', (url) => {
    expect(edgeRequestRoute(request({ url }), domain)).toEqual({ refusal: { status: 404, message: 'not found' } });
  });

  it('serves /metrics of a sandbox port (it is the sandbox app\'s own path)', () => {
    const host = '8080-abc123.kiln.localhost';
    expect(edgeRequestRoute(request({ servername: host, host, url: '/metrics' }), domain)).toEqual({
      route: { kind: 'sandbox', address: { sandboxId: 'abc123', port: 8080 } },
    });
  });

  it('passes sandbox headers that agree with the host, and refuses ones that name another sandbox or port', () => {
    const host = '49983-abc123.kiln.localhost';
    const withHeaders = (headers: Record<string, string>) => edgeRequestRoute({ servername: host, url: '/', headers: { host, ...headers } }, domain);
    expect(withHeaders({ 'e2b-sandbox-id': 'abc123', 'e2b-sandbox-port': '49983' })).toEqual({
      route: { kind: 'sandbox', address: { sandboxId: 'abc123', port: 49983 } },
    });
    expect(withHeaders({ 'e2b-sandbox-id': 'zzz999' })).toEqual({ refusal: expect.objectContaining({ status: 400, message: expect.stringContaining('e2b-sandbox-id') }) });
    expect(withHeaders({ 'e2b-sandbox-port': '8080' })).toEqual({ refusal: expect.objectContaining({ status: 400 }) });
  });
});
