import { constants as osConstants } from 'node:os';

/** How a process ended, in the shape envd reports it (Go's os.ProcessState semantics). */
export interface ExitStatus {
  /** Exit code, or -1 when a signal ended the process (as Go's ProcessState.ExitCode()). */
  exitCode: number;
  /** True when the process called exit itself, false when a signal killed it. */
  exited: boolean;
  /** Go's ProcessState.String(): "exit status 3", "signal: killed". */
  status: string;
  /** Set for every unsuccessful end; the SDK uses it as the CommandExitError message. */
  error?: string;
}

/** Go's names for the signals (runtime sigtable), so status strings match envd byte for byte. */
const GO_SIGNAL_NAMES: Record<string, string> = {
  SIGHUP: 'hangup',
  SIGINT: 'interrupt',
  SIGQUIT: 'quit',
  SIGILL: 'illegal instruction',
  SIGTRAP: 'trace/breakpoint trap',
  SIGABRT: 'aborted',
  SIGBUS: 'bus error',
  SIGFPE: 'floating point exception',
  SIGKILL: 'killed',
  SIGUSR1: 'user defined signal 1',
  SIGSEGV: 'segmentation fault',
  SIGUSR2: 'user defined signal 2',
  SIGPIPE: 'broken pipe',
  SIGALRM: 'alarm clock',
  SIGTERM: 'terminated',
};

function signalName(signal: NodeJS.Signals | number): string {
  const name =
    typeof signal === 'number'
      ? Object.entries(osConstants.signals).find(([, n]) => n === signal)?.[0]
      : signal;
  return (name && GO_SIGNAL_NAMES[name]) ?? `signal ${typeof signal === 'number' ? signal : name}`;
}

export function exitStatusOf(code: number | null, signal: NodeJS.Signals | number | null): ExitStatus {
  if (signal !== null && signal !== 0 && (code === null || code === 0)) {
    const status = `signal: ${signalName(signal)}`;
    return { exitCode: -1, exited: false, status, error: status };
  }
  const exitCode = code ?? 0;
  const status = `exit status ${exitCode}`;
  return exitCode === 0 ? { exitCode, exited: true, status } : { exitCode, exited: true, status, error: status };
}
