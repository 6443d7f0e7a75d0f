import { ErrorCode } from '@kiln/contracts';
import { NOT_SUPPORTED_ROUTES, notSupported, toRouterPath } from './not-supported-routes';

describe('not-supported routes', () => {
  it('lists each route once', () => {
    const keys = NOT_SUPPORTED_ROUTES.map((r) => `${r.method} ${r.path}`);
    expect(new Set(keys).size).toBe(keys.length);
  });

  it('answers 501 naming the route and what it is for', () => {
    const error = notSupported({ method: 'POST', path: '/sandboxes/{sandboxID}/fork', feature: 'forking a sandbox' });
    expect(error.code).toBe(ErrorCode.NotImplemented);
    expect(error.toBody()).toEqual({
      code: 501,
      message: 'POST /sandboxes/{sandboxID}/fork (forking a sandbox) is not supported by this deployment yet',
      error_code: 'not_implemented',
    });
  });

  it("turns E2B's {param} paths into router paths", () => {
    expect(toRouterPath('/templates/{templateID}/builds/{buildID}/status')).toBe('templates/:templateID/builds/:buildID/status');
    expect(toRouterPath('/snapshots')).toBe('snapshots');
  });
});
