import { spawn } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { delimiter, join } from 'node:path';

/**
 * Runs host tools (ip, nft, qemu-img, cp, ...) as child processes with argument arrays:
 * nothing ever goes through a shell, so names and paths can never be interpreted as syntax.
 */
export interface HostCommandOptions {
  /** Written to the child's stdin, then stdin is closed (used for `ip -batch -` and `nft -f -`). */
  input?: string;
  /** The child is killed with SIGKILL once this elapses; the call then fails with HostCommandError. */
  timeoutMs?: number;
  /** Exit codes treated as success besides 0 (e.g. tools that report "nothing to do" with 1). */
  acceptExitCodes?: readonly number[];
}

export interface HostCommandResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export class HostCommandError extends Error {
  constructor(
    readonly file: string,
    readonly args: readonly string[],
    readonly exitCode: number | null,
    readonly stderr: string,
    reason: string,
  ) {
    super(`${file} ${args.join(' ')}: ${reason}${stderr ? `: ${stderr.trim()}` : ''}`);
    this.name = 'HostCommandError';
  }
}

const DEFAULT_TIMEOUT_MS = 30_000;

export function runHostCommand(
  file: string,
  args: readonly string[],
  options: HostCommandOptions = {},
): Promise<HostCommandResult> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);

    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    // A child that exits before reading all of its input raises EPIPE on stdin; its exit code tells the real story.
    child.stdin.on('error', () => undefined);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new HostCommandError(file, args, null, '', `failed to start: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const err = Buffer.concat(stderr).toString('utf8');
      if (timedOut) {
        reject(new HostCommandError(file, args, null, err, `timed out after ${timeoutMs} ms`));
        return;
      }
      if (code === null) {
        reject(new HostCommandError(file, args, null, err, `killed by ${signal}`));
        return;
      }
      if (code !== 0 && !(options.acceptExitCodes ?? []).includes(code)) {
        reject(new HostCommandError(file, args, code, err, `exited with ${code}`));
        return;
      }
      resolve({ exitCode: code, stdout: Buffer.concat(stdout).toString('utf8'), stderr: err });
    });
    child.stdin.end(options.input ?? '');
  });
}

/** True when an executable named `file` is on PATH (used to enable optional tools such as conntrack). */
export async function hostToolAvailable(file: string): Promise<boolean> {
  const dirs = (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter).filter(Boolean);
  for (const dir of dirs) {
    try {
      await access(join(dir, file), constants.X_OK);
      return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}
