import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CallHandler, ExecutionContext } from '@nestjs/common';
import { HostAgentEnv, loadConfig } from '@kiln/config';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { HealthController, MetricsRegistry, type HealthReport } from '@kiln/telemetry';
import { firstValueFrom, of } from 'rxjs';
import { GrpcExceptionFilter, RETRY_AFTER_METADATA_KEY } from '../grpc/grpc-exception.filter';
import { SandboxManager } from '../sandbox/sandbox-manager.service';
import { TemplateBootError, type TemplateSnapshot, type TemplateSnapshots } from '../snapshot';
import { TemplateSnapshotHealthInterceptor, type HostAgentHealthReport } from './template-snapshot-health.interceptor';

/** The snapshot seam: fails `failures` times, then hands out a snapshot. */
function flakySnapshots(failures: number): Pick<TemplateSnapshots, 'ensure'> {
  let attempts = 0;
  return {
    ensure: async (templateId: string, buildId?: string) => {
      attempts++;
      if (attempts <= failures) throw new TemplateBootError(`template ${templateId}/${buildId}: guest agent did not answer (attempt ${attempts})`);
      return { build: { templateId, buildId }, dir: '/snap', manifest: { vcpus: 1, memoryMib: 256 } } as unknown as TemplateSnapshot;
    },
  };
}

const until = async (condition: () => boolean, timeoutMs = 3_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
};

describe('template snapshot state through the agent: /health, CreateSandbox and its gRPC status', () => {
  let dataDir: string;
  let manager: SandboxManager;

  beforeEach(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'kiln-readiness-'));
    const env = loadConfig(HostAgentEnv, { KILN_HOST_STATE_KEY: 'readiness-test-host-state-key-0123456789', KILN_DATA_DIR: dataDir });
    // Faster than the env allows (whole seconds), so the retries happen within the test.
    Object.assign(env, { KILN_SNAPSHOT_RETRY_INITIAL_SECONDS: 0.05, KILN_SNAPSHOT_RETRY_MAX_SECONDS: 0.1 });
    manager = new SandboxManager(
      env,
      { checkPolicy: () => ({ policy: { allowOut: [], denyOut: [] } }) } as never,
      {} as never,
      {} as never,
      flakySnapshots(2) as TemplateSnapshots,
      { keepWarm: () => undefined } as never,
      { list: async () => [{ templateId: 'base', currentBuildId: 'b1', buildIds: ['b1'] }] } as never,
      { publish: async () => undefined } as never,
      new MetricsRegistry(),
    );
  });

  afterEach(async () => {
    manager.onApplicationShutdown();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('reports failed then ready on /health, and a create during the failure gets UNAVAILABLE with the reason and a retry-after', async () => {
    const interceptor = new TemplateSnapshotHealthInterceptor(manager);
    const health = async () => {
      const context = { getType: () => 'http', getClass: () => HealthController } as unknown as ExecutionContext;
      const report: HealthReport = { status: 'ok', service: 'host-agent', uptimeSeconds: 1, dependencies: {} };
      return (await firstValueFrom(interceptor.intercept(context, { handle: () => of(report) } as CallHandler))) as HostAgentHealthReport;
    };

    manager.onApplicationBootstrap();
    await until(() => manager.templateSnapshots()[0]?.state === 'failed');
    const failing = await health();
    // The agent itself stays up: the template's state is a component, not a failed dependency.
    expect(failing.status).toBe('ok');
    expect(failing.components.templates.status).toBe('not-ready');
    expect(failing.components.templates.builds[0]).toMatchObject({
      templateId: 'base',
      buildId: 'b1',
      state: 'failed',
      attempts: 1,
      lastFailure: 'template base/b1: guest agent did not answer (attempt 1)',
      nextRetryAt: expect.any(String),
    });

    const refused = await manager
      .create({ sandboxId: 'sb-1', templateId: 'base', buildId: 'b1', teamId: 't', envVars: {}, metadata: {} })
      .catch((e: unknown) => e as KilnError);
    expect(refused).toBeInstanceOf(KilnError);
    expect(refused).toMatchObject({ code: ErrorCode.Unavailable, retryAfterSeconds: 1 });
    expect((refused as KilnError).message).toMatch(/^template base is not ready: snapshot failed: template base\/b1: guest agent did not answer \(attempt \d\)/);

    // The gRPC status carries the message, and the retry-after as trailing metadata.
    const status = await firstValueFrom(new GrpcExceptionFilter().catch(refused, {} as never)).catch((e: unknown) => e);
    expect(status).toMatchObject({ code: 14, details: (refused as KilnError).message });
    expect((status as { metadata: { get(key: string): unknown[] } }).metadata.get(RETRY_AFTER_METADATA_KEY)).toEqual(['1']);

    await until(() => manager.templateSnapshots()[0]?.state === 'ready');
    const ready = await health();
    expect(ready.components.templates).toEqual({
      status: 'ready',
      builds: [{ templateId: 'base', buildId: 'b1', state: 'ready', attempts: 3, lastFailure: undefined, nextRetryAt: undefined }],
    });
  });
});
