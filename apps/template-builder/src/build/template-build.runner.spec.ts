import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Logger } from '@nestjs/common';
import { LocalArtifactStore } from '@kiln/artifacts';
import { TemplateBuilderEnv, loadConfig } from '@kiln/config';
import { TemplateBuildLogEntry } from '@kiln/contracts';
import { HostRepository, PrismaService } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import { eventually } from '@kiln/testing';
import type { BuildTemplateEvent, BuildTemplateRequest } from '@kiln/proto/hostagent';
import { definitionWithCopy, readyEvents, seedBuild, seedFiles, seedHost } from '../../test/support/build-fixtures';
import { BuildCancellations } from './build-cancellations';
import { BuildCall, BuildHost, BuildHostClient } from './build-host-client';
import { BuildHostPicker } from './build-host-picker';
import { BuildRequestResolver } from './build-request';
import { BuildCancelledError, BuildDefinitionError, BuildInfrastructureError, BuildStepFailedError, BuildTimeoutError } from './template-build.errors';
import { TemplateBuildRunner } from './template-build.runner';
import { TemplateBuildStore } from './template-build.store';

/** One scripted host call: the events it streams (an Error item fails the call there); `hang` then waits for cancel. */
interface Script {
  events: Array<BuildTemplateEvent | Error>;
  hang?: boolean;
}

/** The host agent, scripted: records each request and whether the call was cancelled. */
class ScriptedBuildHostClient extends BuildHostClient {
  readonly calls: Array<{ host: BuildHost; request: BuildTemplateRequest; cancelled: boolean }> = [];
  readonly scripts: Script[] = [];
  /** Resolves when the current call has streamed everything it was scripted to. */
  streamed?: Promise<void>;

  start(host: BuildHost, request: BuildTemplateRequest): BuildCall {
    const script = this.scripts.shift() ?? { events: [] };
    const record = { host, request, cancelled: false };
    this.calls.push(record);
    let onCancel!: () => void;
    const cancelled = new Promise<void>((resolve) => (onCancel = resolve));
    let markStreamed!: () => void;
    this.streamed = new Promise<void>((resolve) => (markStreamed = resolve));
    return {
      cancel: () => {
        record.cancelled = true;
        onCancel();
      },
      events: (async function* () {
        for (const event of script.events) {
          await new Promise((resolve) => setImmediate(resolve));
          if (event instanceof Error) throw event;
          yield event;
        }
        markStreamed();
        if (script.hang) await cancelled;
      })(),
    };
  }
}

describe('TemplateBuildRunner (host events → build state and logs; real Postgres, scripted host client)', () => {
  let db: TestDatabase;
  let prisma: PrismaService;
  let artifactDir: string;
  let artifacts: LocalArtifactStore;
  let store: TemplateBuildStore;
  let client: ScriptedBuildHostClient;
  let cancellations: BuildCancellations;
  let published: Array<{ buildId: string; entry: TemplateBuildLogEntry }>;
  let runner: TemplateBuildRunner;
  let env: TemplateBuilderEnv;

  beforeAll(async () => {
    Logger.overrideLogger(false);
    db = await createTestDatabase();
    prisma = new PrismaService(db.url);
    artifactDir = mkdtempSync(join(tmpdir(), 'kiln-build-runner-'));
    artifacts = new LocalArtifactStore(artifactDir);
    store = new TemplateBuildStore(prisma);
    env = loadConfig(TemplateBuilderEnv, { DATABASE_URL: db.url, KILN_ARTIFACT_DIR: artifactDir, BUILD_TIMEOUT_SECONDS: '2' });
    await seedHost(prisma, 'host-a', '127.0.0.1:1');
  });

  beforeEach(() => {
    client = new ScriptedBuildHostClient();
    cancellations = new BuildCancellations();
    published = [];
    runner = new TemplateBuildRunner(
      env,
      store,
      new BuildRequestResolver(artifacts, store),
      new BuildHostPicker(new HostRepository(prisma)),
      client,
      cancellations,
      (buildId, entry) => published.push({ buildId, entry }),
    );
  });

  afterAll(async () => {
    await prisma?.$disconnect();
    await db?.drop();
    rmSync(artifactDir, { recursive: true, force: true });
  });

  const buildRow = (id: string) => prisma.templateBuild.findUniqueOrThrow({ where: { id }, include: { tags: true } });
  const logRows = (buildId: string) => prisma.templateBuildLog.findMany({ where: { buildId }, orderBy: { seq: 'asc' } });

  async function copyBuild(options: Parameters<typeof seedBuild>[2] = {}) {
    const filesHash = `h${Math.random().toString(16).slice(2)}`;
    const seeded = await seedBuild(prisma, null, options);
    const sha256 = await seedFiles(prisma, artifacts, seeded.teamId, filesHash);
    await prisma.templateBuild.update({ where: { id: seeded.buildId }, data: { definition: definitionWithCopy(filesHash) as object } });
    return { ...seeded, filesHash, sha256 };
  }

  it('runs a build to ready: resolved request, ordered logs stored and published, runtime, artifacts and the default tag', async () => {
    const { buildId, templateId, teamId, filesHash, sha256 } = await copyBuild();
    client.scripts.push({ events: readyEvents() });

    await expect(runner.run(buildId)).resolves.toEqual({ buildId, state: 'ready' });

    const [call] = client.calls;
    expect(call.host).toEqual({ id: 'host-a', address: '127.0.0.1:1' });
    expect(call.request).toMatchObject({
      templateId,
      buildId,
      base: { template: { templateId: 'base', buildId: 'base-build-1' } },
      startCmd: 'python3 -m http.server 8000',
      readyCmd: 'curl -sf localhost:8000',
      vcpus: 2,
      memoryMib: 1024,
      force: false,
    });
    expect(call.request.steps.map((s) => s.type)).toEqual(['RUN', 'COPY', 'ENV']);
    expect(call.request.steps[1]).toMatchObject({ filesHash, filesPath: artifacts.pathOf(`files/${teamId}/${filesHash}`), filesSha256: sha256 });

    const build = await buildRow(buildId);
    expect(build).toMatchObject({
      state: 'ready',
      contentHash: buildId,
      diskMib: 1536,
      envdVersion: '0.6.4',
      runtime: { envs: { GREETING: 'hi' }, workdir: '/srv', user: 'user' },
      artifacts: [{ name: 'rootfs.ext4', bytes: 1048576, sha256: 'a'.repeat(64) }],
      startCmd: 'python3 -m http.server 8000',
      readyCmd: 'curl -sf localhost:8000',
      builtOnHostId: 'host-a',
      reason: null,
    });
    expect(build.startedAt).toBeInstanceOf(Date);
    expect(build.finishedAt).toBeInstanceOf(Date);
    expect(build.tags.map((t) => t.tag)).toEqual(['default']);

    const logs = await logRows(buildId);
    expect(logs.map((l) => l.seq)).toEqual(logs.map((_, i) => i));
    expect(logs.map((l) => [l.step, l.message])).toEqual([
      ['0', 'building on host host-a'],
      ['0', 'base template base-build-1'],
      ['0', 'CACHED [base]'],
      ['1', 'CACHED [1/3] RUN apt-get install -y jq root'],
      ['2', "'app.sh' -> '/srv/app.sh'"],
      ['2', '[2/3] COPY app.sh /srv/ done in 1.5 s'],
      ['3', '[3/3] ENV GREETING hi done in 0.0 s'],
      ['4', 'snapshot taken'],
      ['4', 'build ready'],
    ]);
    expect(published.map((p) => p.entry)).toEqual(logs.map((l) => ({ seq: l.seq, timestamp: l.timestamp.toISOString(), level: l.level, message: l.message, step: l.step })));
    expect(new Set(published.map((p) => p.buildId))).toEqual(new Set([buildId]));
  });

  it('keeps the default tag where it is when the build was tagged without it (name:v2)', async () => {
    const first = await copyBuild();
    client.scripts.push({ events: readyEvents() });
    await runner.run(first.buildId);
    const tagged = await seedBuild(prisma, definitionWithCopy('unused'), { tags: ['v2'] });
    await prisma.templateBuild.update({ where: { id: tagged.buildId }, data: { templateId: first.templateId } });
    await prisma.templateTag.update({ where: { templateId_tag: { templateId: tagged.templateId, tag: 'v2' } }, data: { templateId: first.templateId } });
    await prisma.templateBuild.update({ where: { id: tagged.buildId }, data: { definition: { ...definitionWithCopy('unused'), steps: [] } as object } });
    client.scripts.push({ events: readyEvents() });
    await runner.run(tagged.buildId);
    const tags = await prisma.templateTag.findMany({ where: { templateId: first.templateId }, orderBy: { tag: 'asc' } });
    expect(tags.map((t) => [t.tag, t.buildId])).toEqual([
      ['default', first.buildId],
      ['v2', tagged.buildId],
    ]);
  });

  it('ends the build error at a failing user step, naming the step, with its output in the log; not retryable', async () => {
    const { buildId } = await copyBuild();
    client.scripts.push({
      events: [
        { step: { step: 0, cached: true, layerKey: 'k0', durationMs: 0 } },
        { log: { level: 'error', message: 'E: Unable to locate package jq', step: 1, atMs: Date.now() } },
        { failed: { step: 1, message: 'the command exited with code 100' } },
      ],
    });

    const failure = await runner.run(buildId, { number: 1, of: 3 }).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(BuildStepFailedError);
    expect((failure as BuildStepFailedError).retryable).toBe(false);

    expect(await buildRow(buildId)).toMatchObject({
      state: 'error',
      reasonStep: '1',
      reason: '[1/3] RUN apt-get install -y jq root: the command exited with code 100',
    });
    const logs = await logRows(buildId);
    expect(logs.map((l) => [l.level, l.step, l.message]).slice(-2)).toEqual([
      ['error', '1', 'E: Unable to locate package jq'],
      ['error', '1', 'build failed: [1/3] RUN apt-get install -y jq root: the command exited with code 100'],
    ]);
  });

  it('treats a failed host call as infrastructure: retryable until the last attempt, which ends the build error', async () => {
    const { buildId } = await copyBuild();
    client.scripts.push({ events: [{ step: { step: 0, cached: false, layerKey: 'k0', durationMs: 5 } }, new BuildInfrastructureError('host host-a (127.0.0.1:1): Connection dropped')] });
    client.scripts.push({ events: [new BuildInfrastructureError('host host-a (127.0.0.1:1): No connection established')] });

    const first = await runner.run(buildId, { number: 1, of: 2 }).catch((error: unknown) => error);
    expect(first).toBeInstanceOf(BuildInfrastructureError);
    expect((first as BuildInfrastructureError).retryable).toBe(true);
    expect(await buildRow(buildId)).toMatchObject({ state: 'building', reason: null });

    const second = await runner.run(buildId, { number: 2, of: 2 }).catch((error: unknown) => error);
    expect(second).toBeInstanceOf(BuildInfrastructureError);
    expect(await buildRow(buildId)).toMatchObject({ state: 'error', reason: 'host host-a (127.0.0.1:1): No connection established', reasonStep: null });
    const messages = (await logRows(buildId)).map((l) => l.message);
    expect(messages).toContain('attempt 1 of 2 failed: host host-a (127.0.0.1:1): Connection dropped; retrying');
    expect(messages).toContain('building on host host-a (attempt 2 of 2)');
    expect(messages.at(-1)).toBe('build failed: host host-a (127.0.0.1:1): No connection established');
  });

  it('treats a stream that ends without a result as infrastructure', async () => {
    const { buildId } = await copyBuild();
    client.scripts.push({ events: [{ step: { step: 0, cached: false, layerKey: 'k0', durationMs: 5 } }] });
    const failure = await runner.run(buildId, { number: 1, of: 1 }).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(BuildInfrastructureError);
    expect(await buildRow(buildId)).toMatchObject({ state: 'error', reason: 'host host-a ended the build without a result' });
  });

  it('cancels a running build on the NATS cancel path: the host call is cancelled and the build ends error "cancelled"', async () => {
    const { buildId } = await copyBuild();
    client.scripts.push({ events: [{ log: { level: 'info', message: 'running apt-get', step: 1, atMs: Date.now() } }], hang: true });
    const running = runner.run(buildId, { number: 1, of: 3 }).catch((error: unknown) => error);
    await eventually('the host call', () => client.calls.length === 1, { intervalMs: 10 });
    await client.streamed;
    expect(cancellations.cancel(buildId)).toBe(true);

    expect(await running).toBeInstanceOf(BuildCancelledError);
    expect(client.calls[0].cancelled).toBe(true);
    expect(await buildRow(buildId)).toMatchObject({ state: 'error', reason: 'cancelled' });
    expect((await logRows(buildId)).at(-1)).toMatchObject({ level: 'error', message: 'build cancelled' });
    expect(cancellations.cancel(buildId)).toBe(false);
  });

  it('cancels a running build whose cancelRequested flag is set (no message needed)', async () => {
    const { buildId } = await copyBuild();
    client.scripts.push({ events: [], hang: true });
    // Past the first poll of the flag, well before the build's deadline.
    const patient = new TemplateBuildRunner(
      { ...env, BUILD_TIMEOUT_SECONDS: 60 } as TemplateBuilderEnv,
      store,
      new BuildRequestResolver(artifacts, store),
      new BuildHostPicker(new HostRepository(prisma)),
      client,
      cancellations,
      () => undefined,
    );
    const running = patient.run(buildId).catch((error: unknown) => error);
    await eventually('the host call', () => client.calls.length === 1, { intervalMs: 10 });
    await prisma.templateBuild.update({ where: { id: buildId }, data: { cancelRequested: true } });
    expect(await running).toBeInstanceOf(BuildCancelledError);
    expect(client.calls[0].cancelled).toBe(true);
    expect(await buildRow(buildId)).toMatchObject({ state: 'error', reason: 'cancelled' });
  }, 10_000);

  it('ends a build cancelled before it started without calling a host', async () => {
    const { buildId } = await copyBuild({ cancelRequested: true });
    expect(await runner.run(buildId).catch((error: unknown) => error)).toBeInstanceOf(BuildCancelledError);
    expect(client.calls).toHaveLength(0);
    expect(await buildRow(buildId)).toMatchObject({ state: 'error', reason: 'cancelled', startedAt: null });
  });

  it('stops a build that outlives BUILD_TIMEOUT_SECONDS, naming the step it was in; not retryable', async () => {
    const { buildId } = await copyBuild();
    client.scripts.push({ events: [{ log: { level: 'info', message: 'sleeping', step: 2, atMs: Date.now() } }], hang: true });
    const failure = await runner.run(buildId, { number: 1, of: 3 }).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(BuildTimeoutError);
    expect(client.calls[0].cancelled).toBe(true);
    expect(await buildRow(buildId)).toMatchObject({ state: 'error', reason: 'the build did not finish within 2 s (stopped in step 2)', reasonStep: '2' });
  }, 10_000);

  it('fails a COPY step whose archive is gone, naming the step, without calling a host', async () => {
    const { buildId, teamId, filesHash } = await copyBuild();
    await artifacts.removePrefix(`files/${teamId}/${filesHash}`);
    const failure = await runner.run(buildId, { number: 1, of: 3 }).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(BuildDefinitionError);
    expect(client.calls).toHaveLength(0);
    expect(await buildRow(buildId)).toMatchObject({ state: 'error', reasonStep: '2', reason: expect.stringMatching(/^step 2 \(COPY\): the files .* were never uploaded or are gone$/) });
  });

  it('fails a build without a definition, and leaves an ended build alone when its job runs again', async () => {
    const { buildId } = await seedBuild(prisma, null);
    expect(await runner.run(buildId).catch((error: unknown) => error)).toBeInstanceOf(BuildDefinitionError);
    expect(await buildRow(buildId)).toMatchObject({ state: 'error', reason: 'the build has no definition: it was never started' });
    await expect(runner.run(buildId)).resolves.toEqual({ buildId, state: 'error' });
    expect(client.calls).toHaveLength(0);
  });

  it.each(['unhealthy', 'dead', 'draining', 'cordoned'] as const)('retries when the only host is %s (no ready host)', async (state) => {
    const { buildId } = await copyBuild();
    // The host monitor's verdict, whatever the last heartbeat: a fresh heartbeat does not make a host ready.
    await prisma.host.update({ where: { id: 'host-a' }, data: { state, lastHeartbeatAt: new Date() } });
    try {
      const failure = await runner.run(buildId, { number: 1, of: 3 }).catch((error: unknown) => error);
      expect(failure).toBeInstanceOf(BuildInfrastructureError);
      expect((failure as Error).message).toMatch(/no host is available/);
      expect(await buildRow(buildId)).toMatchObject({ state: 'building' });
    } finally {
      await seedHost(prisma, 'host-a', '127.0.0.1:1');
    }
  });
});
