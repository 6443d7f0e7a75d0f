import { stat } from 'node:fs/promises';
import { fileHttpError } from './http-io';

describe('fileHttpError', () => {
  it('answers 400 for a path holding a NUL byte (GET /files?path=/tmp/%00 was a 500)', async () => {
    const failure = await stat('/tmp/\0').catch((err: unknown) => err);
    expect(fileHttpError(failure, '/tmp/\0')).toMatchObject({ status: 400, message: "invalid path '/tmp/\0'" });
  });

  it('keeps 500 for a failure it cannot attribute to the caller (control)', () => {
    expect(fileHttpError(Object.assign(new Error('odd'), { code: 'EIO' }), '/x').status).toBe(500);
  });
});
