import { KilnError } from '@kiln/contracts';
import { rejectUnsupportedConnectOptions, rejectUnsupportedCreateOptions } from './unsupported-create-options';

/** The create body the e2b JS SDK builds for `Sandbox.create('base', opts)` (sandboxApi.ts createSandbox), trimmed. */
function sdkBody(autoPause?: boolean, autoResume?: boolean) {
  return {
    templateID: 'base',
    timeout: 300,
    secure: true,
    allow_internet_access: true,
    autoPause,
    autoPauseMemory: undefined,
    autoResume: autoResume === undefined ? undefined : { enabled: autoResume },
  };
}

function refusal(body: unknown): string | undefined {
  try {
    rejectUnsupportedCreateOptions(body);
    return undefined;
  } catch (error) {
    expect(error).toBeInstanceOf(KilnError);
    return (error as KilnError).message;
  }
}

describe('pausing on timeout at create', () => {
  it("accepts what the SDK sends by default and for onTimeout: 'kill'", () => {
    // No lifecycle: autoPause is left out. onTimeout 'kill': autoPause false.
    expect(refusal(JSON.parse(JSON.stringify(sdkBody())))).toBeUndefined();
    expect(refusal(sdkBody(false))).toBeUndefined();
    expect(refusal(sdkBody(false, false))).toBeUndefined();
    expect(refusal({ templateID: 'base', lifecycle: { onTimeout: 'kill', autoResume: false } })).toBeUndefined();
    expect(refusal({ templateID: 'base', lifecycle: { onTimeout: { action: 'kill' } } })).toBeUndefined();
  });

  it("refuses autoPause: true (the SDK's onTimeout: 'pause'), naming the field", () => {
    expect(refusal(sdkBody(true))).toBe('not supported by this deployment: autoPause');
    expect(refusal(sdkBody(true, true))).toBe('not supported by this deployment: autoResume, autoPause');
  });

  it('refuses a lifecycle object that asks for pause or auto-resume', () => {
    expect(refusal({ templateID: 'base', lifecycle: { onTimeout: 'pause' } })).toContain('lifecycle.onTimeout');
    expect(refusal({ templateID: 'base', lifecycle: { onTimeout: { action: 'pause', keepMemory: false } } })).toContain('lifecycle.onTimeout');
    expect(refusal({ templateID: 'base', lifecycle: { onTimeout: 'pause', autoResume: true } })).toContain('lifecycle.onTimeout, lifecycle.autoResume');
  });

  it('leaves a mistyped autoPause to validation, which names it', () => {
    expect(refusal({ templateID: 'base', autoPause: 'yes' })).toBeUndefined();
  });

  it('refuses autoPause: true on connect too', () => {
    expect(() => rejectUnsupportedConnectOptions({ timeout: 30, autoPause: true })).toThrow('not supported by this deployment: autoPause');
    expect(() => rejectUnsupportedConnectOptions({ timeout: 30, autoPause: false })).not.toThrow();
    expect(() => rejectUnsupportedConnectOptions(undefined)).not.toThrow();
  });
});
