import { usernameFromAuthorization } from './request-user';

describe('usernameFromAuthorization', () => {
  const basic = (s: string) => `Basic ${Buffer.from(s).toString('base64')}`;
  it('reads the user from Basic "<user>:" as the e2b SDK sends it', () => {
    expect(usernameFromAuthorization(basic('root:'))).toBe('root');
    expect(usernameFromAuthorization(basic('user:ignored'))).toBe('user');
  });
  it('falls back to the default for absent, empty or non-Basic headers', () => {
    expect(usernameFromAuthorization(undefined)).toBeUndefined();
    expect(usernameFromAuthorization(basic(':'))).toBeUndefined();
    expect(usernameFromAuthorization('Bearer abc')).toBeUndefined();
  });
});
