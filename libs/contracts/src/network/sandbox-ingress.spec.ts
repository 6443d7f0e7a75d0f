import { fileSignature } from '../guest/envd-auth';
import {
  IngressRequest,
  TRAFFIC_ACCESS_TOKEN_HEADER,
  applyIngressHeaders,
  envdAccessDecision,
  forwardableRequestTarget,
  ingressDecision,
  userPortDecision,
} from './sandbox-ingress';

const TOKEN = 'envd-token-1';
const NOW = 1_700_000_000;
const request = (method: string, url: string, headers: IngressRequest['headers'] = {}): IngressRequest => ({ method, url, headers });
const withToken = (token = TOKEN) => ({ 'x-access-token': token });
const status = (decision: ReturnType<typeof envdAccessDecision>) => (decision.allowed ? 'allowed' : decision.status);

describe('envdAccessDecision', () => {
  it('lets GET and HEAD /health through without a token, and nothing else on /health', () => {
    expect(status(envdAccessDecision(request('GET', '/health'), TOKEN, NOW))).toBe('allowed');
    expect(status(envdAccessDecision(request('HEAD', '/health'), TOKEN, NOW))).toBe('allowed');
    expect(status(envdAccessDecision(request('POST', '/health'), TOKEN, NOW))).toBe(401);
  });

  it('refuses /init from outside with 403, whatever the method, token or spelling of the path', () => {
    for (const url of ['/init', '/init?x=1', '/health/../init', '/./init']) {
      for (const method of ['POST', 'GET', 'PUT']) {
        expect(envdAccessDecision(request(method, url, withToken()), TOKEN, NOW)).toEqual({ allowed: false, status: 403, message: expect.stringContaining('/init') });
      }
    }
  });

  it('needs the token header on everything else, and refuses a wrong one', () => {
    for (const [method, url] of [
      ['POST', '/process.Process/Start'],
      ['POST', '/filesystem.Filesystem/Stat'],
      ['GET', '/envs'],
      ['GET', '/metrics'],
      ['GET', '/anything'],
      ['GET', '/health/../envs'],
    ]) {
      expect(status(envdAccessDecision(request(method, url), TOKEN, NOW))).toBe(401);
      expect(status(envdAccessDecision(request(method, url, withToken('wrong')), TOKEN, NOW))).toBe(401);
      expect(status(envdAccessDecision(request(method, url, withToken('')), TOKEN, NOW))).toBe(401);
      expect(status(envdAccessDecision(request(method, url, withToken()), TOKEN, NOW))).toBe('allowed');
    }
  });

  it('takes the token header or a signed URL on GET|POST /files', () => {
    const signed = (operation: 'read' | 'write', user: string, expiration?: number, path = '/home/user/a.txt') =>
      `/files?path=${encodeURIComponent(path)}` +
      (user ? `&username=${user}` : '') +
      `&signature=${encodeURIComponent(fileSignature(path, operation, user, TOKEN, expiration))}` +
      (expiration === undefined ? '' : `&signature_expiration=${expiration}`);
    expect(status(envdAccessDecision(request('GET', '/files?path=/x', withToken()), TOKEN, NOW))).toBe('allowed');
    expect(status(envdAccessDecision(request('GET', '/files?path=/x'), TOKEN, NOW))).toBe(401);
    expect(status(envdAccessDecision(request('GET', signed('read', 'user')), TOKEN, NOW))).toBe('allowed');
    expect(status(envdAccessDecision(request('GET', signed('read', '')), TOKEN, NOW))).toBe('allowed');
    expect(status(envdAccessDecision(request('POST', signed('write', 'root')), TOKEN, NOW))).toBe('allowed');
    expect(status(envdAccessDecision(request('GET', signed('read', 'user', NOW + 60)), TOKEN, NOW))).toBe('allowed');
    // Expired, or signed for another operation, path, user or token.
    expect(envdAccessDecision(request('GET', signed('read', 'user', NOW - 1)), TOKEN, NOW)).toEqual({ allowed: false, status: 401, message: 'signature is already expired' });
    expect(status(envdAccessDecision(request('POST', signed('read', 'user')), TOKEN, NOW))).toBe(401);
    expect(status(envdAccessDecision(request('GET', signed('read', 'user').replace('a.txt', 'b.txt')), TOKEN, NOW))).toBe(401);
    expect(status(envdAccessDecision(request('GET', signed('read', 'user').replace('username=user', 'username=root')), TOKEN, NOW))).toBe(401);
    expect(status(envdAccessDecision(request('GET', signed('read', 'user')), 'other-token', NOW))).toBe(401);
    // A tampered expiration breaks the signature.
    expect(status(envdAccessDecision(request('GET', signed('read', 'user', NOW - 1).replace(`${NOW - 1}`, `${NOW + 999}`)), TOKEN, NOW))).toBe(401);
    // A present but wrong token header is checked even when the signature is fine (as envd does).
    expect(status(envdAccessDecision(request('GET', signed('read', 'user'), withToken('wrong')), TOKEN, NOW))).toBe(401);
    // A signature only stands in for the token on /files.
    expect(status(envdAccessDecision(request('GET', signed('read', 'user').replace('/files', '/envs')), TOKEN, NOW))).toBe(401);
  });

  it('fails closed for a sandbox without a token: only /health passes', () => {
    expect(status(envdAccessDecision(request('GET', '/health'), undefined, NOW))).toBe('allowed');
    expect(status(envdAccessDecision(request('POST', '/process.Process/List', withToken('')), undefined, NOW))).toBe(401);
    expect(status(envdAccessDecision(request('GET', '/files?path=/x'), undefined, NOW))).toBe(401);
  });
});

describe('userPortDecision', () => {
  it('passes anything when the ports are public', () => {
    expect(userPortDecision(request('GET', '/'), {}, 8080)).toEqual({ allowed: true });
  });

  it('needs the traffic access token when one is set: 403 when missing or wrong', () => {
    const ingress = { trafficAccessToken: 'traffic-1' };
    expect(userPortDecision(request('GET', '/'), ingress, 8080)).toEqual({ allowed: false, status: 403, message: expect.stringContaining('missing') });
    expect(userPortDecision(request('GET', '/', { [TRAFFIC_ACCESS_TOKEN_HEADER]: '' }), ingress, 8080)).toMatchObject({ status: 403 });
    expect(userPortDecision(request('GET', '/', { [TRAFFIC_ACCESS_TOKEN_HEADER]: 'nope' }), ingress, 8080)).toEqual({
      allowed: false,
      status: 403,
      message: expect.stringContaining('invalid'),
    });
    // The envd token is not a traffic token.
    expect(userPortDecision(request('GET', '/', withToken()), ingress, 8080)).toMatchObject({ status: 403 });
    expect(userPortDecision(request('GET', '/', { [TRAFFIC_ACCESS_TOKEN_HEADER]: 'traffic-1' }), ingress, 8080)).toEqual({ allowed: true });
  });

  it('masks the Host with the port filled in', () => {
    expect(userPortDecision(request('GET', '/'), { maskRequestHost: 'localhost:${PORT}' }, 3000)).toEqual({ allowed: true, host: 'localhost:3000' });
    expect(userPortDecision(request('GET', '/'), { maskRequestHost: 'app.internal' }, 3000)).toEqual({ allowed: true, host: 'app.internal' });
  });
});

describe('ingressDecision', () => {
  const ingress = { envdAccessToken: TOKEN, trafficAccessToken: 'traffic-1', maskRequestHost: 'masked:${PORT}' };

  it('applies the envd rule on port 49983 (no traffic token, no mask there) and the user-port rule elsewhere', () => {
    expect(ingressDecision(request('POST', '/process.Process/List', withToken()), 49983, ingress, NOW)).toEqual({ allowed: true });
    expect(ingressDecision(request('POST', '/process.Process/List', { [TRAFFIC_ACCESS_TOKEN_HEADER]: 'traffic-1' }), 49983, ingress, NOW)).toMatchObject({ status: 401 });
    expect(ingressDecision(request('GET', '/', withToken()), 8080, ingress, NOW)).toMatchObject({ status: 403 });
    expect(ingressDecision(request('GET', '/', { [TRAFFIC_ACCESS_TOKEN_HEADER]: 'traffic-1' }), 8080, ingress, NOW)).toEqual({ allowed: true, host: 'masked:8080' });
  });

  it('lets user ports through on a host that only knows the envd token (the gateway enforces traffic tokens)', () => {
    expect(ingressDecision(request('GET', '/'), 8080, { envdAccessToken: TOKEN }, NOW)).toEqual({ allowed: true });
  });
});

describe('applyIngressHeaders', () => {
  it('strips the traffic access token and sets the masked Host', () => {
    const headers: Record<string, string> = { host: 'caller.example', [TRAFFIC_ACCESS_TOKEN_HEADER]: 't', 'x-access-token': 'kept' };
    applyIngressHeaders(headers, { allowed: true, host: 'masked:8080' });
    expect(headers).toEqual({ host: 'masked:8080', 'x-access-token': 'kept' });
    const unmasked: Record<string, string> = { host: 'caller.example', [TRAFFIC_ACCESS_TOKEN_HEADER]: 't' };
    applyIngressHeaders(unmasked, { allowed: true });
    expect(unmasked).toEqual({ host: 'caller.example' });
  });
});

describe('forwardableRequestTarget', () => {
  it('refuses targets http-proxy would throw on or read as another host (/\\..., found by tools/fuzz)', () => {
    for (const target of ['/\\', '/\\[', '/\\a b', '/\\evil.example/x', '', '*', 'http://other/x', undefined]) {
      expect({ target, forwardable: forwardableRequestTarget(target) }).toEqual({ target, forwardable: false });
    }
  });

  it('forwards ordinary paths, odd but valid ones included (control)', () => {
    for (const target of ['/', '/health', '/files?path=/tmp/a%00b', '//double/slash', '/%zz', '/process.Process/Start', '/a\\b']) {
      expect({ target, forwardable: forwardableRequestTarget(target) }).toEqual({ target, forwardable: true });
    }
  });
});
