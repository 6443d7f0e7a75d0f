/**
 * Runs an app's bootstrap and turns any start-up failure into a single clear
 * line on stderr and a non-zero exit, instead of a stack-trace flood or a hang.
 */
/**
 * One line that says what went wrong. Driver errors often start with a blank line
 * or embed the server's reason in backticks (Prisma), so dig that out.
 */
export function describeError(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  const serverReason = /Message: `([^`]+)`/.exec(text)?.[1];
  if (serverReason) return serverReason;
  const firstLine = text.split('\n').map((l) => l.trim()).find((l) => l.length > 0);
  return firstLine ?? (error instanceof Error ? error.name : 'unknown error');
}

export async function runOrExit(service: string, start: () => Promise<unknown>): Promise<void> {
  try {
    await start();
  } catch (error) {
    const reason = describeError(error);
    process.stderr.write(`${service}: fatal: ${reason}\n`);
    // EX_CONFIG for configuration errors, EX_UNAVAILABLE for everything else.
    process.exit(error instanceof Error && error.name === 'ConfigError' ? 78 : 69);
  }
}

/** Bounded exponential backoff for start-up dependencies; the last failure is rethrown with the dependency's name. */
export async function retryWithBackoff<T>(
  dependency: string,
  attempt: () => Promise<T>,
  options: { attempts?: number; initialDelayMs?: number; maxDelayMs?: number; onRetry?: (error: unknown, n: number, delayMs: number) => void } = {},
): Promise<T> {
  const attempts = options.attempts ?? 6;
  let delay = options.initialDelayMs ?? 200;
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (error) {
      if (n >= attempts) {
        const reason = describeError(error);
        throw new Error(`${dependency} unavailable after ${attempts} attempts: ${reason}`);
      }
      options.onRetry?.(error, n, delay);
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, options.maxDelayMs ?? 5_000);
    }
  }
}
