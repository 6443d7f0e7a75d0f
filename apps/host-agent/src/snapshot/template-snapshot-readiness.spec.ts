import { TemplateNotFoundError } from '../template';
import { TemplateBootError, TemplateNotReadyError } from './snapshot.errors';
import { TemplateSnapshotReadiness, type SnapshotSource } from './template-snapshot-readiness';
import type { TemplateSnapshot } from './template-snapshots';

/** A snapshot seam whose attempts fail, succeed or hang as the test says, one outcome per attempt. */
class FakeSnapshotSource implements SnapshotSource {
  readonly attempts: string[] = [];
  private readonly outcomes: Array<'fail' | 'succeed' | 'hang' | 'missing'>;
  private hanging?: { resolve: (s: TemplateSnapshot) => void; reject: (e: unknown) => void };

  constructor(...outcomes: Array<'fail' | 'succeed' | 'hang' | 'missing'>) {
    this.outcomes = outcomes;
  }

  ensure(templateId: string, buildId?: string): Promise<TemplateSnapshot> {
    this.attempts.push(`${templateId}/${buildId}`);
    const outcome = this.outcomes.length > 1 ? this.outcomes.shift()! : this.outcomes[0];
    if (outcome === 'fail') return Promise.reject(new TemplateBootError(`template ${templateId}: guest agent did not answer within 1 ms\nserial log line`));
    if (outcome === 'missing') return Promise.reject(new TemplateNotFoundError(`template ${templateId} has no build ${buildId}`));
    if (outcome === 'hang') return new Promise((resolve, reject) => (this.hanging = { resolve, reject }));
    return Promise.resolve(snapshotOf(templateId, buildId!));
  }

  finishHanging(outcome: 'succeed' | 'fail'): void {
    if (outcome === 'succeed') this.hanging!.resolve(snapshotOf('base', 'b1'));
    else this.hanging!.reject(new TemplateBootError('template base: VM exited'));
  }
}

function snapshotOf(templateId: string, buildId: string): TemplateSnapshot {
  return { build: { templateId, buildId }, dir: `/snap/${templateId}/${buildId}` } as TemplateSnapshot;
}

const until = async (condition: () => boolean, timeoutMs = 2_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 2));
  }
};

describe('TemplateSnapshotReadiness', () => {
  let readiness: TemplateSnapshotReadiness;
  afterEach(() => readiness?.close());

  it('retries a failing snapshot with backoff: failed (with the reason and next retry) twice, then ready', async () => {
    const source = new FakeSnapshotSource('fail', 'fail', 'succeed');
    const readied: TemplateSnapshot[] = [];
    readiness = new TemplateSnapshotReadiness(source, { initialDelayMs: 40, maxDelayMs: 1_000 }, (s) => readied.push(s));

    await readiness.prepare('base', 'b1');
    const [failed] = readiness.describe();
    expect(failed).toMatchObject({ templateId: 'base', buildId: 'b1', state: 'failed', attempts: 1 });
    // The first line only: a boot failure's message carries the guest's serial log.
    expect(failed.lastFailure).toBe('template base: guest agent did not answer within 1 ms');
    expect(Date.parse(failed.nextRetryAt!)).toBeGreaterThan(Date.now());

    // A create during the failure fails fast with the reason and a retry-after.
    const error = await readiness.whenReady('base', 'b1', 60_000).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TemplateNotReadyError);
    expect((error as TemplateNotReadyError).message).toMatch(
      /^template base is not ready: snapshot failed: template base: guest agent did not answer within 1 ms \(attempt 1; next attempt in 1 s\)$/,
    );
    expect((error as TemplateNotReadyError).retryAfterSeconds).toBe(1);

    await until(() => readiness.describe()[0].attempts === 2 && readiness.describe()[0].state === 'failed');
    await until(() => readiness.describe()[0].state === 'ready');
    expect(readiness.describe()[0]).toEqual({ templateId: 'base', buildId: 'b1', state: 'ready', attempts: 3, lastFailure: undefined, nextRetryAt: undefined });
    expect(source.attempts).toEqual(['base/b1', 'base/b1', 'base/b1']);
    expect(readied).toHaveLength(1);
    await expect(readiness.whenReady('base', 'b1', 60_000)).resolves.toMatchObject({ dir: '/snap/base/b1' });
  });

  it('doubles the wait after each failure up to the cap', async () => {
    const source = new FakeSnapshotSource('fail');
    readiness = new TemplateSnapshotReadiness(source, { initialDelayMs: 10, maxDelayMs: 40 }, () => undefined);
    const started = Date.now();
    await readiness.prepare('base', 'b1');
    await until(() => source.attempts.length >= 5, 3_000);
    // 10 + 20 + 40 + 40 ms of waits before the fifth attempt.
    expect(Date.now() - started).toBeGreaterThanOrEqual(100);
    const waitMs = Date.parse(readiness.describe()[0].nextRetryAt ?? new Date().toISOString()) - Date.now();
    expect(waitMs).toBeLessThanOrEqual(40);
  });

  it('makes a create that arrives during a build wait for it, and bounds that wait', async () => {
    const source = new FakeSnapshotSource('hang');
    readiness = new TemplateSnapshotReadiness(source, { initialDelayMs: 2_000, maxDelayMs: 60_000 }, () => undefined);
    void readiness.prepare('base', 'b1');
    expect(readiness.describe()[0].state).toBe('building');

    const impatient = await readiness.whenReady('base', 'b1', 20).catch((e: unknown) => e);
    expect(impatient).toBeInstanceOf(TemplateNotReadyError);
    expect((impatient as Error).message).toBe('template base is not ready: its snapshot is still being built (attempt 1; waited 0 s)');

    const waiting = readiness.whenReady('base', 'b1', 60_000);
    source.finishHanging('succeed');
    await expect(waiting).resolves.toMatchObject({ dir: '/snap/base/b1' });
    expect(source.attempts).toHaveLength(1);
  });

  it('fails a create waiting on a build that fails with that build\'s reason', async () => {
    const source = new FakeSnapshotSource('hang');
    readiness = new TemplateSnapshotReadiness(source, { initialDelayMs: 5_000, maxDelayMs: 60_000 }, () => undefined);
    const waiting = readiness.whenReady('base', 'b1', 60_000).catch((e: unknown) => e);
    source.finishHanging('fail');
    const error = (await waiting) as TemplateNotReadyError;
    expect(error).toBeInstanceOf(TemplateNotReadyError);
    expect(error.message).toBe('template base is not ready: snapshot failed: template base: VM exited (attempt 1; next attempt in 5 s)');
    expect(error.retryAfterSeconds).toBe(5);
  });

  it('does not track (or retry) a template that does not exist', async () => {
    const source = new FakeSnapshotSource('missing');
    readiness = new TemplateSnapshotReadiness(source, { initialDelayMs: 5, maxDelayMs: 5 }, () => undefined);
    await expect(readiness.whenReady('nope', 'b1', 1_000)).rejects.toBeInstanceOf(TemplateNotFoundError);
    await new Promise((r) => setTimeout(r, 30));
    expect(readiness.describe()).toEqual([]);
    expect(source.attempts).toHaveLength(1);
  });

  it('stops retrying once closed', async () => {
    const source = new FakeSnapshotSource('fail');
    readiness = new TemplateSnapshotReadiness(source, { initialDelayMs: 10, maxDelayMs: 10 }, () => undefined);
    await readiness.prepare('base', 'b1');
    readiness.close();
    await new Promise((r) => setTimeout(r, 50));
    expect(source.attempts).toHaveLength(1);
  });

  it('turns a ready build whose snapshot stops loading into a failed one that is retried', async () => {
    const source = new FakeSnapshotSource('succeed', 'fail', 'succeed');
    readiness = new TemplateSnapshotReadiness(source, { initialDelayMs: 10, maxDelayMs: 10 }, () => undefined);
    await readiness.prepare('base', 'b1');
    await expect(readiness.whenReady('base', 'b1', 1_000)).rejects.toBeInstanceOf(TemplateNotReadyError);
    expect(readiness.describe()[0].state).toBe('failed');
    await until(() => readiness.describe()[0].state === 'ready');
  });
});
