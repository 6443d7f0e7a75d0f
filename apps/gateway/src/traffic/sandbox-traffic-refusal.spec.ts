import 'reflect-metadata';
import { ErrorCode, KilnError, SandboxState } from '@kiln/contracts';
import { refusalFor } from './sandbox-traffic.proxy';

describe('refusalFor', () => {
  const address = { sandboxId: 'abc', port: 49983 };
  const route = (state: SandboxState) => ({ sandboxId: 'abc', teamId: 't', state, proxyUrl: 'http://h:5007', envdAccessToken: 'tok' });

  it('answers 502 for a missing sandbox, as E2B does and the SDK expects', () => {
    expect(refusalFor(address, KilnError.notFound('sandbox abc'))).toEqual({
      status: 502,
      body: { code: 502, message: 'The sandbox was not found', error_code: 'not_found', sandboxId: 'abc' },
    });
  });

  it('answers 502 for a paused or pausing sandbox and lets running ones through', () => {
    expect(refusalFor(address, route(SandboxState.Paused))).toEqual({
      status: 502,
      body: { code: 502, message: 'The sandbox is paused', error_code: 'conflict', sandboxId: 'abc', canAutoResume: false },
    });
    expect(refusalFor(address, route(SandboxState.Pausing))?.status).toBe(502);
    expect(refusalFor(address, route(SandboxState.Running))).toBeUndefined();
  });

  it('answers 503 when the route lookup itself failed', () => {
    expect(refusalFor(address, new KilnError(ErrorCode.Unavailable, 'no reply'))?.status).toBe(503);
    expect(refusalFor(address, new KilnError(ErrorCode.Internal, 'boom'))?.status).toBe(503);
  });
});
