import { KilnError } from '@kiln/contracts';
import { lifecycleOf, rejectUnsupportedConnectOptions, rejectUnsupportedCreateOptions } from './unsupported-create-options';

/** The create body the e2b JS SDK 2.51 builds for `Sandbox.create('base', { lifecycle })` (createSandbox), trimmed. */
function sdkBody(onTimeout?: 'kill' | 'pause' | { action: 'kill' | 'pause'; keepMemory?: boolean }, autoResume?: boolean) {
  const action = typeof onTimeout === 'string' ? onTimeout : onTimeout?.action;
  const hasKeepMemory = typeof onTimeout === 'object' && 'keepMemory' in onTimeout;
  return JSON.parse(
    JSON.stringify({
      templateID: 'base',
      timeout: 300,
      autoPause: onTimeout === undefined ? undefined : action === 'pause',
      autoPauseMemory: action === 'pause' && hasKeepMemory ? (onTimeout as { keepMemory?: boolean }).keepMemory : undefined,
      autoResume: autoResume === undefined ? undefined : { enabled: autoResume },
    }),
  );
}

function refusal(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (error) {
    expect(error).toBeInstanceOf(KilnError);
    return (error as KilnError).message;
  }
}

describe('the create lifecycle', () => {
  it('reads what the SDK sends for each lifecycle option', () => {
    expect(lifecycleOf(sdkBody())).toEqual({ autoPause: false, autoPauseMemory: true, autoResume: false });
    expect(lifecycleOf(sdkBody('kill'))).toEqual({ autoPause: false, autoPauseMemory: true, autoResume: false });
    expect(lifecycleOf(sdkBody('pause'))).toEqual({ autoPause: true, autoPauseMemory: true, autoResume: false });
    expect(lifecycleOf(sdkBody('pause', true))).toEqual({ autoPause: true, autoPauseMemory: true, autoResume: true });
    expect(lifecycleOf(sdkBody({ action: 'pause', keepMemory: false }))).toEqual({ autoPause: true, autoPauseMemory: false, autoResume: false });
  });

  it('reads the lifecycle object hand-written clients send, in both onTimeout shapes', () => {
    expect(lifecycleOf({ lifecycle: { onTimeout: 'pause', autoResume: true } })).toEqual({ autoPause: true, autoPauseMemory: true, autoResume: true });
    expect(lifecycleOf({ lifecycle: { onTimeout: { action: 'pause', keepMemory: false } } })).toEqual({ autoPause: true, autoPauseMemory: false, autoResume: false });
    expect(lifecycleOf({ lifecycle: { onTimeout: { action: 'kill' } } })).toEqual({ autoPause: false, autoPauseMemory: true, autoResume: false });
    expect(lifecycleOf({ lifecycle: { onTimeout: null, autoResume: null } })).toEqual({ autoPause: false, autoPauseMemory: true, autoResume: false });
    // Both forms at once, agreeing.
    expect(lifecycleOf({ autoPause: true, lifecycle: { onTimeout: 'pause' } })).toEqual({ autoPause: true, autoPauseMemory: true, autoResume: false });
  });

  it('refuses what E2B refuses: autoResume with a disk-only pause, keepMemory without pause, unknown actions, disagreements', () => {
    expect(refusal(() => lifecycleOf({ autoPause: true, autoPauseMemory: false, autoResume: { enabled: true } }))).toContain('autoPauseMemory: false');
    expect(refusal(() => lifecycleOf({ lifecycle: { onTimeout: { action: 'pause', keepMemory: false }, autoResume: true } }))).toContain('autoResume');
    expect(refusal(() => lifecycleOf({ lifecycle: { onTimeout: { action: 'kill', keepMemory: true } } }))).toContain('keepMemory');
    expect(refusal(() => lifecycleOf({ lifecycle: { onTimeout: 'hibernate' } }))).toContain('lifecycle.onTimeout');
    expect(refusal(() => lifecycleOf({ autoPause: false, lifecycle: { onTimeout: 'pause' } }))).toContain('disagree');
    expect(refusal(() => lifecycleOf({ autoResume: { enabled: false }, lifecycle: { autoResume: true } }))).toContain('disagree');
    expect(refusal(() => lifecycleOf({ lifecycle: { autoResume: 'yes' } }))).toContain('lifecycle.autoResume');
  });

  it('no longer refuses pausing options at create', () => {
    expect(refusal(() => rejectUnsupportedCreateOptions(sdkBody('pause', true)))).toBeUndefined();
    expect(refusal(() => rejectUnsupportedCreateOptions({ templateID: 'base', lifecycle: { onTimeout: 'pause', autoResume: true } }))).toBeUndefined();
  });

  it('refuses resuming from disk only (memory: false) on connect and resume, and accepts the rest', () => {
    expect(refusal(() => rejectUnsupportedConnectOptions({ timeout: 30, memory: false }))).toContain('memory: false');
    expect(refusal(() => rejectUnsupportedConnectOptions({ timeout: 30, memory: true, autoPause: true }))).toBeUndefined();
    expect(refusal(() => rejectUnsupportedConnectOptions(undefined))).toBeUndefined();
  });
});
