import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { Job, Queue, QueueEvents } from 'bullmq';
import IORedis from 'ioredis';
import { NatsConnection, connect } from 'nats';
import { LocalArtifactStore } from '@kiln/artifacts';
import { TemplateBuilderEnv, loadConfig } from '@kiln/config';
import { grpcServerCredentials, loadInternalTls } from '@kiln/config/internal-tls';
import { BUILD_TEMPLATE_JOB, BUILD_TEMPLATE_JOB_OPTIONS, BuildTemplateJob, TEMPLATE_BUILD_QUEUE, TemplateBuildLogEntry } from '@kiln/contracts';
import { PrismaService } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import {
  NatsUser,
  Subjects,
  TEMPLATE_BUILD_LOGS_SUBJECTS,
  generateKilnNatsUsers,
  natsAuthOptions,
  natsCredentialsEnv,
  renderNatsServerConfig,
} from '@kiln/messaging';
import { PrivateServer, eventually, startPrivateNats, startPrivateRedis } from '@kiln/testing';
import { AppModule } from '../src/app.module';
import { definitionWithCopy, readyEvents, seedBuild, seedFiles, seedHost } from './support/build-fixtures';
import { ScriptedHostAgent } from './support/scripted-host-agent';

const ROOT = join(__dirname, '..', '..', '..');

/**
 * `build-template` jobs end to end through the template builder's real worker: a real BullMQ queue in Redis, real
 * Postgres, real NATS with Kiln's service users and grants (logs published, cancellations heard), and the internal
 * mTLS certificates of the stack. The host agent is a scripted gRPC server: a real grpc-js server speaking the
 * HostAgent service over mTLS, whose BuildTemplate streams the events each test scripts.
 */
describe('template-builder build jobs against a host agent that is a scripted gRPC server (real Redis, Postgres, NATS, mTLS)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-template-build-'));
  const tls = (service: string) => ({ caFile: join(dir, 'tls', 'ca.pem'), certFile: join(dir, 'tls', `${service}.pem`), keyFile: join(dir, 'tls', `${service}-key.pem`) });
  let db: TestDatabase;
  let redisServer: PrivateServer;
  let natsServer: PrivateServer;
  let users: NatsUser[];
  let hostAgent: ScriptedHostAgent;
  let app: NestFastifyApplication;
  let prisma: PrismaService;
  let artifacts: LocalArtifactStore;
  let redis: IORedis;
  let queue: Queue<BuildTemplateJob>;
  let events: QueueEvents;
  let eventsRedis: IORedis;
  let gateway: NatsConnection;
  const published = new Map<string, TemplateBuildLogEntry[]>();

  beforeAll(async () => {
    execFileSync('bash', [join(ROOT, 'tools', 'stack', 'internal-tls.sh'), join(dir, 'tls'), '127.0.0.1,localhost', 'host-agent', 'template-builder']);
    users = generateKilnNatsUsers([]);
    [db, redisServer, natsServer] = await Promise.all([
      createTestDatabase(),
      startPrivateRedis(),
      startPrivateNats({ config: ({ port, storeDir }) => renderNatsServerConfig({ port, storeDir, users }) }),
    ]);
    hostAgent = new ScriptedHostAgent(grpcServerCredentials(loadInternalTls(tls('host-agent'))));
    const hostAddress = await hostAgent.start();

    const builderTls = tls('template-builder');
    const env = loadConfig(TemplateBuilderEnv, {
      REDIS_URL: redisServer.url,
      DATABASE_URL: db.url,
      NATS_URL: natsServer.url,
      ...natsCredentialsEnv(users, 'template-builder'),
      KILN_ARTIFACT_DIR: join(dir, 'artifacts'),
      KILN_INTERNAL_CA_FILE: builderTls.caFile,
      KILN_INTERNAL_CERT_FILE: builderTls.certFile,
      KILN_INTERNAL_KEY_FILE: builderTls.keyFile,
      BUILD_CONCURRENCY: '2',
      LOG_LEVEL: 'silent',
    });
    Logger.overrideLogger(false);
    app = await NestFactory.create<NestFastifyApplication>(AppModule.forRoot(env), new FastifyAdapter(), { logger: false });
    await app.listen(0, '127.0.0.1');
    prisma = app.get(PrismaService);
    artifacts = new LocalArtifactStore(env.KILN_ARTIFACT_DIR);
    await seedHost(prisma, 'scripted-host', hostAddress);

    redis = new IORedis(env.REDIS_URL, { maxRetriesPerRequest: null });
    queue = new Queue(TEMPLATE_BUILD_QUEUE, { connection: redis });
    events = new QueueEvents(TEMPLATE_BUILD_QUEUE, { connection: (eventsRedis = redis.duplicate()) });
    await events.waitUntilReady();

    // The gateway's NATS user: it follows build logs and sends cancellations.
    const gatewayAuth = natsCredentialsEnv(users, 'gateway');
    gateway = await connect({ servers: natsServer.url, ...natsAuthOptions({ user: gatewayAuth.NATS_USER, password: gatewayAuth.NATS_PASSWORD }) });
    gateway.subscribe(TEMPLATE_BUILD_LOGS_SUBJECTS, {
      callback: (_error, message) => {
        const buildId = message.subject.split('.')[3];
        published.set(buildId, [...(published.get(buildId) ?? []), message.json<TemplateBuildLogEntry>()]);
      },
    });
    await gateway.flush();
  }, 60_000);

  afterAll(async () => {
    await gateway?.close();
    await events?.close();
    await queue?.close();
    await redis?.quit();
    await eventsRedis?.quit();
    await app?.close();
    await hostAgent?.stop();
    await db?.drop();
    await Promise.all([redisServer?.stop(), natsServer?.stop()]);
    rmSync(dir, { recursive: true, force: true });
  });

  /** A started build of the acceptance definition (COPY archive uploaded), as the gateway leaves it. */
  async function startedBuild() {
    const filesHash = `files${Math.random().toString(16).slice(2)}`;
    const seeded = await seedBuild(prisma, null);
    const sha256 = await seedFiles(prisma, artifacts, seeded.teamId, filesHash);
    await prisma.templateBuild.update({ where: { id: seeded.buildId }, data: { definition: definitionWithCopy(filesHash) as object } });
    return { ...seeded, filesHash, sha256 };
  }

  /** Enqueues the build as the gateway does (its options; a short backoff so retries come quickly). */
  function enqueue(buildId: string): Promise<Job<BuildTemplateJob>> {
    return queue.add(BUILD_TEMPLATE_JOB, { buildId }, { ...BUILD_TEMPLATE_JOB_OPTIONS, jobId: buildId, backoff: { type: 'fixed', delay: 200 } });
  }

  const buildRow = (id: string) => prisma.templateBuild.findUniqueOrThrow({ where: { id } });
  const logRows = (buildId: string) => prisma.templateBuildLog.findMany({ where: { buildId }, orderBy: { seq: 'asc' } });

  it('runs a build to ready over mTLS as spiffe://kiln/template-builder, storing its logs and publishing them in order on NATS', async () => {
    const { buildId, templateId, teamId, filesHash, sha256 } = await startedBuild();
    hostAgent.script(buildId, { events: readyEvents() });

    const job = await enqueue(buildId);
    await expect(job.waitUntilFinished(events, 20_000)).resolves.toEqual({ buildId, state: 'ready' });

    const [call] = hostAgent.callsFor(buildId);
    expect(call.caller).toBe('template-builder');
    expect(call.request).toMatchObject({ templateId, buildId, base: { template: { templateId: 'base', buildId: 'base-build-1' } }, vcpus: 2, memoryMib: 1024 });
    expect(call.request.steps[1]).toMatchObject({ type: 'COPY', args: ['app.sh', '/srv/'], filesPath: artifacts.pathOf(`files/${teamId}/${filesHash}`), filesSha256: sha256 });
    expect(await buildRow(buildId)).toMatchObject({
      state: 'ready',
      contentHash: buildId,
      builtOnHostId: 'scripted-host',
      runtime: { envs: { GREETING: 'hi' }, workdir: '/srv', user: 'user' },
      diskMib: 1536,
    });
    expect(await prisma.templateTag.findUnique({ where: { templateId_tag: { templateId, tag: 'default' } } })).toMatchObject({ buildId });

    const stored = (await logRows(buildId)).map((l) => ({ seq: l.seq, timestamp: l.timestamp.toISOString(), level: l.level, message: l.message, step: l.step }));
    expect(stored.map((l) => l.message)).toContain('CACHED [1/3] RUN apt-get install -y jq root');
    expect(stored.at(-1)).toMatchObject({ message: 'build ready', step: '4' });
    await eventually('every log entry on NATS', () => published.get(buildId)?.length === stored.length);
    expect(published.get(buildId)).toEqual(stored);
  }, 30_000);

  it('ends a build whose step fails error, naming the step, and never retries it', async () => {
    const { buildId } = await startedBuild();
    hostAgent.script(buildId, {
      events: [
        { step: { step: 0, cached: true, layerKey: 'k0', durationMs: 0 } },
        { log: { level: 'error', message: 'bash: line 1: false: exit 1', step: 1, atMs: Date.now() } },
        { failed: { step: 1, message: 'the command exited with code 1' } },
      ],
    });

    const job = await enqueue(buildId);
    await expect(job.waitUntilFinished(events, 20_000)).rejects.toThrow('[1/3] RUN apt-get install -y jq root: the command exited with code 1');
    expect(await buildRow(buildId)).toMatchObject({ state: 'error', reasonStep: '1', reason: '[1/3] RUN apt-get install -y jq root: the command exited with code 1' });
    // Past the backoff a retry would have come in.
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect(hostAgent.callsFor(buildId)).toHaveLength(1);
    expect((await queue.getJob(buildId))?.attemptsMade).toBe(1);
    expect((await logRows(buildId)).map((l) => l.message)).toContain('bash: line 1: false: exit 1');
  }, 30_000);

  it('retries a build whose host call fails (UNAVAILABLE), which then ends ready', async () => {
    const { buildId } = await startedBuild();
    hostAgent.script(
      buildId,
      { events: [{ step: { step: 0, cached: false, layerKey: 'k0', durationMs: 3 } }], error: { code: status.UNAVAILABLE, details: 'host agent restarting' } },
      { events: readyEvents() },
    );

    const job = await enqueue(buildId);
    await expect(job.waitUntilFinished(events, 20_000)).resolves.toEqual({ buildId, state: 'ready' });
    expect(hostAgent.callsFor(buildId)).toHaveLength(2);
    const messages = (await logRows(buildId)).map((l) => l.message);
    expect(messages).toContain(`attempt 1 of 3 failed: host scripted-host (127.0.0.1:${hostAgent.port}): host agent restarting; retrying`);
    expect(messages).toContain('building on host scripted-host (attempt 2 of 3)');
    expect(await buildRow(buildId)).toMatchObject({ state: 'ready', reason: null });
  }, 30_000);

  it('ends a build error with the host’s message once every attempt failed on infrastructure', async () => {
    const { buildId } = await startedBuild();
    const unavailable = { events: [], error: { code: status.UNAVAILABLE, details: 'no build slot' } };
    hostAgent.script(buildId, unavailable, unavailable, unavailable);

    const job = await enqueue(buildId);
    await expect(job.waitUntilFinished(events, 20_000)).rejects.toThrow('no build slot');
    expect(hostAgent.callsFor(buildId)).toHaveLength(3);
    expect(await buildRow(buildId)).toMatchObject({ state: 'error', reason: `host scripted-host (127.0.0.1:${hostAgent.port}): no build slot` });
  }, 30_000);

  it('cancels a running build on kiln.templates.builds.cancel: the host call is cancelled, the build ends error "cancelled"', async () => {
    const { buildId } = await startedBuild();
    hostAgent.script(buildId, { events: [{ log: { level: 'info', message: 'Reading package lists...', step: 1, atMs: Date.now() } }], hang: true });

    const job = await enqueue(buildId);
    await eventually('the build’s first log line on NATS', () => published.get(buildId)?.some((e) => e.message === 'Reading package lists...'));
    gateway.publish(Subjects.templateBuildCancel, JSON.stringify({ buildId }));

    await expect(job.waitUntilFinished(events, 20_000)).rejects.toThrow('cancelled');
    await eventually('the host to see the call cancelled', () => hostAgent.callsFor(buildId)[0]?.cancelled);
    expect(hostAgent.callsFor(buildId)).toHaveLength(1);
    expect(await buildRow(buildId)).toMatchObject({ state: 'error', reason: 'cancelled' });
    expect((await logRows(buildId)).at(-1)).toMatchObject({ level: 'error', message: 'build cancelled' });
  }, 30_000);
});
