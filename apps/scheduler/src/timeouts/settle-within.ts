/** Waits for `work` at most `ms`; then runs `onTimeout` (a forced close) and moves on. Never throws. */
export async function settleWithin(ms: number, work: Promise<unknown> | undefined, onTimeout?: () => unknown): Promise<void> {
  if (!work) return;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), ms)));
  const expired = await Promise.race([work.then(() => false, () => false), timedOut]);
  clearTimeout(timer);
  if (expired) await Promise.resolve(onTimeout?.()).catch(() => undefined);
}
