import { spawn } from 'node:child_process';
import { BaseLayerCancelledError, BaseLayerToolError } from './base-layers.errors';

export interface ToolOptions {
  signal: AbortSignal;
  /** Each output line (stdout and stderr) as it arrives, for the build log. */
  onLine?: (line: string) => void;
  /** Killed (whole process group) after this; the call fails with BaseLayerToolError. */
  timeoutMs?: number;
  /** Grace between SIGTERM and SIGKILL on cancel: mmdebstrap unmounts what it mounted in its chroot on SIGTERM. */
  termGraceMs?: number;
  input?: string;
  env?: NodeJS.ProcessEnv;
}

export interface ToolResult {
  stdout: string;
  stderr: string;
}

/** A tool exited non-zero: callers inspect `stderr` to tell a user error (unknown image) from a host failure. */
export class ToolExitError extends BaseLayerToolError {
  constructor(
    readonly file: string,
    readonly exitCode: number | null,
    readonly stderr: string,
    reason: string,
  ) {
    super(`${file}: ${reason}${stderr.trim() ? `: ${lastLines(stderr, 6)}` : ''}`);
  }
}

const DEFAULT_TIMEOUT_MS = 30 * 60_000;

/**
 * Runs a host tool with an argument array (never a shell) in its own process group, so a cancel or timeout takes
 * its children too (mmdebstrap runs apt and dpkg; skopeo none, but the rule is the same for all).
 */
export function runTool(file: string, args: readonly string[], options: ToolOptions): Promise<ToolResult> {
  const { signal } = options;
  if (signal.aborted) return Promise.reject(new BaseLayerCancelledError());
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'], detached: true, env: options.env ?? process.env });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let ended: 'cancel' | 'timeout' | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    const killGroup = (sig: NodeJS.Signals) => {
      try {
        if (child.pid) process.kill(-child.pid, sig);
      } catch {
        // already gone
      }
    };
    const stop = (why: 'cancel' | 'timeout') => {
      if (ended) return;
      ended = why;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), options.termGraceMs ?? 2_000);
    };
    const timer = setTimeout(() => stop('timeout'), options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const onAbort = () => stop('cancel');
    signal.addEventListener('abort', onAbort, { once: true });

    const lineSplitter = () => {
      let pending = '';
      return (chunk: Buffer, flush = false) => {
        if (!options.onLine) return;
        pending += chunk.toString('utf8');
        const parts = pending.split(/\r?\n|\r/);
        pending = flush ? '' : (parts.pop() ?? '');
        for (const part of parts) if (part.trim()) options.onLine(part);
      };
    };
    const outLines = lineSplitter();
    const errLines = lineSplitter();
    child.stdout.on('data', (chunk: Buffer) => {
      stdout.push(chunk);
      outLines(chunk);
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr.push(chunk);
      errLines(chunk);
    });
    child.stdin.on('error', () => undefined);
    const finish = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    };
    child.on('error', (err) => {
      finish();
      clearTimeout(killTimer);
      reject(new ToolExitError(file, null, '', `failed to start: ${err.message}`));
    });
    child.on('close', (code, sig) => {
      finish();
      // The group may still hold children that ignored SIGTERM; make sure none outlives the call.
      if (ended) killGroup('SIGKILL');
      clearTimeout(killTimer);
      outLines(Buffer.alloc(0), true);
      errLines(Buffer.alloc(0), true);
      const err = Buffer.concat(stderr).toString('utf8');
      if (ended === 'cancel') return reject(new BaseLayerCancelledError());
      if (ended === 'timeout') return reject(new ToolExitError(file, null, err, 'timed out'));
      if (code !== 0) return reject(new ToolExitError(file, code, err, code === null ? `killed by ${sig}` : `exited with ${code}`));
      resolve({ stdout: Buffer.concat(stdout).toString('utf8'), stderr: err });
    });
    child.stdin.end(options.input ?? '');
  });
}

export function lastLines(text: string, count: number): string {
  return text.trim().split('\n').slice(-count).join(' | ');
}
