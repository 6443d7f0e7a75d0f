import { stat } from 'node:fs/promises';
import { Code } from '@connectrpc/connect';
import { fsConnectError } from './fs-errors';

describe('fsConnectError', () => {
  it('a path holding a NUL byte is the caller’s invalid argument, not an internal error', async () => {
    const failure = await stat('/tmp/a\0b').catch((err: unknown) => err);
    expect((failure as NodeJS.ErrnoException).code).toBe('ERR_INVALID_ARG_VALUE');
    expect(fsConnectError(failure, 'stat').code).toBe(Code.InvalidArgument);
  });

  it('an fs failure it has no mapping for stays internal (control)', () => {
    expect(fsConnectError(Object.assign(new Error('odd'), { code: 'EIO' }), 'read').code).toBe(Code.Internal);
  });
});
