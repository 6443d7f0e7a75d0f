import {
  API_KEY_PATTERN,
  ErrorCode,
  GRPC_STATUS_BY_ERROR_CODE,
  KilnError,
  NewSandboxDto,
  SandboxState,
  canTransition,
  displayPrefixOf,
  errorCodeForGrpcStatus,
  generateApiKey,
  hashApiKey,
  toPublicSandboxState,
  validatePayload,
} from '../src';

describe('error model', () => {
  it('serialises to E2B’s body with the HTTP status as code', () => {
    expect(new KilnError(ErrorCode.NotFound, 'sandbox x not found').toBody()).toEqual({ code: 404, message: 'sandbox x not found', error_code: 'not_found' });
    expect(new KilnError(ErrorCode.ResourceExhausted, 'full', 5).httpStatus).toBe(503);
  });

  it('survives a trip through a transport payload and through gRPC status codes', () => {
    const original = new KilnError(ErrorCode.RateLimited, 'slow down', 3);
    const copy = KilnError.fromPayload(JSON.parse(JSON.stringify(original.toPayload())));
    expect(copy).toMatchObject({ code: ErrorCode.RateLimited, message: 'slow down', retryAfterSeconds: 3 });
    for (const code of [ErrorCode.NotFound, ErrorCode.FailedPrecondition, ErrorCode.Unavailable, ErrorCode.AlreadyExists]) {
      expect(errorCodeForGrpcStatus(GRPC_STATUS_BY_ERROR_CODE[code])).toBe(code);
    }
    expect(errorCodeForGrpcStatus(undefined)).toBe(ErrorCode.Internal);
    expect(KilnError.isPayload({ errorCode: 'bogus', message: 'x' })).toBe(false);
  });
});

describe('sandbox state machine', () => {
  it('allows the lifecycle and nothing out of a terminal state but error → killed', () => {
    expect(canTransition(SandboxState.Pending, SandboxState.Starting)).toBe(true);
    expect(canTransition(SandboxState.Running, SandboxState.Killed)).toBe(true);
    expect(canTransition(SandboxState.Killed, SandboxState.Running)).toBe(false);
    expect(canTransition(SandboxState.Error, SandboxState.Killed)).toBe(true);
    expect(canTransition(SandboxState.Error, SandboxState.Running)).toBe(false);
    expect(toPublicSandboxState(SandboxState.Starting)).toBe('running');
    expect(toPublicSandboxState(SandboxState.Paused)).toBe('paused');
    expect(toPublicSandboxState(SandboxState.Killed)).toBeUndefined();
  });
});

describe('DTO validation', () => {
  it('accepts an E2B create body', () => {
    const dto = validatePayload(NewSandboxDto, { templateID: 'base', timeout: 300, metadata: { a: 'b' }, envVars: { X: '1' }, secure: true });
    expect(dto).toMatchObject({ templateID: 'base', timeout: 300 });
  });

  it('names each offending field', () => {
    expect(() => validatePayload(NewSandboxDto, { templateID: '', timeout: -1, metadata: { a: 1 } })).toThrow(/templateID.*timeout.*metadata|templateID/);
    try {
      validatePayload(NewSandboxDto, { templateID: 'base', timeout: 'soon' });
    } catch (error) {
      expect(error).toMatchObject({ code: ErrorCode.InvalidArgument });
      expect((error as Error).message).toContain('timeout');
    }
    expect(() => validatePayload(NewSandboxDto, [1, 2])).toThrow('request body must be a JSON object');
  });
});

describe('API keys', () => {
  it('are E2B-shaped, stored only as a hash, shown by a short prefix', () => {
    const key = generateApiKey();
    expect(key).toMatch(API_KEY_PATTERN);
    expect(hashApiKey(key)).toMatch(/^[0-9a-f]{64}$/);
    expect(hashApiKey(key)).not.toContain(key.slice(4));
    expect(displayPrefixOf(key)).toHaveLength(10);
    expect(generateApiKey()).not.toBe(key);
  });
});
