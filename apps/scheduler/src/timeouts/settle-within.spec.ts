import { settleWithin } from './settle-within';

describe('settleWithin', () => {
  it('waits for work that settles in time, and does not force it', async () => {
    const forced = jest.fn();
    await settleWithin(1_000, new Promise((r) => setTimeout(r, 10)), forced);
    await settleWithin(1_000, Promise.reject(new Error('closed badly')), forced);
    expect(forced).not.toHaveBeenCalled();
  });

  it('gives up on work that never settles, forces it and returns', async () => {
    const forced = jest.fn();
    const started = Date.now();
    await settleWithin(50, new Promise(() => undefined), forced);
    expect(forced).toHaveBeenCalledTimes(1);
    expect(Date.now() - started).toBeLessThan(1_000);
  });
});
