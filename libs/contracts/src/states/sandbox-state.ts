/** Lifecycle of a sandbox as owned by the scheduler. Values match the database enum. */
export enum SandboxState {
  Pending = 'pending',
  Starting = 'starting',
  Running = 'running',
  Pausing = 'pausing',
  Paused = 'paused',
  Resuming = 'resuming',
  Killed = 'killed',
  Error = 'error',
}

/**
 * Allowed transitions. Anything not listed is rejected by the state machine, so a
 * late event (say, a crash report for an already killed sandbox) cannot resurrect it.
 */
export const SANDBOX_TRANSITIONS: Readonly<Record<SandboxState, readonly SandboxState[]>> = {
  [SandboxState.Pending]: [SandboxState.Starting, SandboxState.Killed, SandboxState.Error],
  [SandboxState.Starting]: [SandboxState.Running, SandboxState.Killed, SandboxState.Error],
  [SandboxState.Running]: [SandboxState.Pausing, SandboxState.Killed, SandboxState.Error],
  [SandboxState.Pausing]: [SandboxState.Paused, SandboxState.Running, SandboxState.Killed, SandboxState.Error],
  [SandboxState.Paused]: [SandboxState.Resuming, SandboxState.Killed, SandboxState.Error],
  [SandboxState.Resuming]: [SandboxState.Running, SandboxState.Paused, SandboxState.Killed, SandboxState.Error],
  [SandboxState.Killed]: [],
  [SandboxState.Error]: [SandboxState.Killed],
};

export const TERMINAL_SANDBOX_STATES: readonly SandboxState[] = [SandboxState.Killed, SandboxState.Error];

/** States in which a sandbox holds host resources and counts against capacity. */
export const LIVE_SANDBOX_STATES: readonly SandboxState[] = [
  SandboxState.Pending,
  SandboxState.Starting,
  SandboxState.Running,
  SandboxState.Pausing,
  SandboxState.Resuming,
];

export function canTransition(from: SandboxState, to: SandboxState): boolean {
  return SANDBOX_TRANSITIONS[from].includes(to);
}

/** The two states E2B's public API exposes. */
export type PublicSandboxState = 'running' | 'paused';

export function toPublicSandboxState(state: SandboxState): PublicSandboxState | undefined {
  switch (state) {
    case SandboxState.Pending:
    case SandboxState.Starting:
    case SandboxState.Running:
    case SandboxState.Resuming:
      return 'running';
    case SandboxState.Pausing:
    case SandboxState.Paused:
      return 'paused';
    default:
      return undefined;
  }
}
