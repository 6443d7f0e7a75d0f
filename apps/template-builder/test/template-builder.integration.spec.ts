import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { Queue, QueueEvents } from 'bullmq';
import IORedis from 'ioredis';
import { RegisterTemplateJob, TEMPLATE_BUILD_QUEUE } from '@kiln/contracts';
import { TemplateBuilderEnv, loadConfig } from '@kiln/config';
import { TemplateRepository, TeamRepository } from '@kiln/db';
import { TestDatabase, createTestDatabase } from '@kiln/db/testing';
import { PrivateServer, startPrivateNats, startPrivateRedis } from '@kiln/testing';
import { AppModule } from '../src/app.module';

/** The worker consumes a real BullMQ queue in Redis and writes the template to real Postgres. */
describe('template-builder worker (real Redis, Postgres, NATS)', () => {
  let db: TestDatabase;
  let app: NestFastifyApplication;
  let redis: IORedis;
  let queue: Queue<RegisterTemplateJob>;
  let events: QueueEvents;
  let eventsRedis: IORedis;
  let dir: string;
  let redisServer: PrivateServer;
  let natsServer: PrivateServer;

  beforeAll(async () => {
    [db, redisServer, natsServer] = await Promise.all([createTestDatabase(), startPrivateRedis(), startPrivateNats()]);
    const env = loadConfig(TemplateBuilderEnv, { REDIS_URL: redisServer.url, DATABASE_URL: db.url, NATS_URL: natsServer.url, LOG_LEVEL: 'silent' });
    app = await NestFactory.create<NestFastifyApplication>(AppModule.forRoot(env), new FastifyAdapter(), { logger: false });
    await app.listen(0, '127.0.0.1');
    redis = new IORedis(env.REDIS_URL, { maxRetriesPerRequest: null });
    queue = new Queue(TEMPLATE_BUILD_QUEUE, { connection: redis });
    events = new QueueEvents(TEMPLATE_BUILD_QUEUE, { connection: (eventsRedis = redis.duplicate()) });
    await events.waitUntilReady();
    dir = mkdtempSync(join(tmpdir(), 'kiln-template-'));
  }, 60_000);

  afterAll(async () => {
    await events?.close();
    await queue?.close();
    await redis?.quit();
    await eventsRedis?.quit();
    await app?.close();
    await db?.drop();
    await redisServer?.stop();
    await natsServer?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('registers a built template and its alias, idempotently', async () => {
    writeFileSync(join(dir, 'rootfs.ext4'), Buffer.alloc(3 * 1024 * 1024));
    const manifestPath = join(dir, 'template.json');
    const templateId = `tpl${db.name.slice(-6)}`;
    writeFileSync(manifestPath, JSON.stringify({ templateId, buildId: 'abc123', vcpus: 2, memoryMib: 768, rootfs: 'rootfs.ext4' }));

    for (let i = 0; i < 2; i++) {
      const job = await queue.add('register-template', { manifestPath, alias: `${templateId}-alias` });
      await expect(job.waitUntilFinished(events, 15_000)).resolves.toEqual({ templateId, buildId: 'abc123' });
    }
    const team = await app.get(TeamRepository).ensure('someone');
    const resolved = await app.get(TemplateRepository).resolve(`${templateId}-alias`, team.id);
    expect(resolved).toMatchObject({ templateId, vcpus: 2, memoryMib: 768, diskMib: 3 });
    const templates = await app.get(TemplateRepository).listVisible(team.id);
    expect(templates.filter((t) => t.id === templateId)).toHaveLength(1);
  }, 30_000);

  it('fails a job whose manifest does not exist, with a clear reason', async () => {
    const job = await queue.add('register-template', { manifestPath: join(dir, 'missing.json') }, { attempts: 1 });
    await expect(job.waitUntilFinished(events, 15_000)).rejects.toThrow(/cannot read template manifest/);
  }, 30_000);
});
