import { DependencyHealth } from '../src';

describe('DependencyHealth', () => {
  it('reports each dependency, degraded when one fails or hangs', async () => {
    const health = new DependencyHealth();
    health.setService('test');
    health.register('fast', async () => undefined);
    health.register('broken', async () => {
      throw new Error('connection refused');
    });
    health.register('hung', () => new Promise(() => undefined));
    const report = await health.report(100);
    expect(report.status).toBe('degraded');
    expect(report.service).toBe('test');
    expect(report.dependencies.fast.status).toBe('up');
    expect(report.dependencies.broken).toMatchObject({ status: 'down', error: 'connection refused' });
    expect(report.dependencies.hung).toMatchObject({ status: 'down', error: 'no answer within 100 ms' });
  });

  it('is ok when every dependency answers', async () => {
    const health = new DependencyHealth();
    health.register('db', async () => 1);
    expect((await health.report()).status).toBe('ok');
  });
});
