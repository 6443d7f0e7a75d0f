/**
 * Polls `probe` until it returns something truthy, which it resolves with; throws naming `what` after
 * `timeoutMs`. For state that settles asynchronously (a VM's exit noticed, a pool refilled, a row written).
 */
export async function eventually<T>(
  what: string,
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  options: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 20_000);
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, options.intervalMs ?? 250));
  }
}
