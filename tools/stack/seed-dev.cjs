#!/usr/bin/env node
// Seeds the dev stack: a `dev` team with an API key, and every template found in the
// host's template store registered through the template-builder's queue. Prints the
// lines of .kiln/dev.env on stdout (with the admin API's token when the stack set one). Reuses a still-valid key from an earlier run.
'use strict';
require('reflect-metadata');
const { existsSync, readFileSync, readdirSync } = require('node:fs');
const { join } = require('node:path');
const { Job, Queue } = require('bullmq');
const IORedis = require('ioredis').default;
const { TEMPLATE_BUILD_QUEUE } = require('@kiln/contracts');
const { ApiKeyRepository, PrismaService, TeamRepository } = require('@kiln/db');

const root = join(__dirname, '..', '..');
const env = process.env;
const dataDir = env.KILN_DATA_DIR || '/var/lib/kiln';

function previousKey() {
  const file = join(env.KILN_STATE || join(root, '.kiln'), 'dev.env');
  if (!existsSync(file)) return undefined;
  return /^E2B_API_KEY=(\S+)$/m.exec(readFileSync(file, 'utf8'))?.[1];
}

async function registerTemplates() {
  const templatesDir = join(dataDir, 'templates');
  const manifests = existsSync(templatesDir)
    ? readdirSync(templatesDir)
        .map((t) => join(templatesDir, t, 'current', 'template.json'))
        .filter((p) => existsSync(p))
    : [];
  if (manifests.length === 0) throw new Error(`no built templates under ${templatesDir}; run the guest image build first`);
  const redis = new IORedis(env.REDIS_URL || 'redis://127.0.0.1:6379', { maxRetriesPerRequest: null });
  const queue = new Queue(TEMPLATE_BUILD_QUEUE, { connection: redis });
  try {
    const registered = [];
    for (const manifestPath of manifests) {
      // Kept a while once completed: the result is read from the job itself (see waitForJob).
      const job = await queue.add('register-template', { manifestPath }, { removeOnComplete: { age: 3600, count: 100 }, removeOnFail: 50 });
      registered.push(await waitForJob(queue, job.id, 60_000));
    }
    return registered;
  } finally {
    await queue.close();
    await redis.quit();
  }
}

/**
 * The job's result once it completed, polled from Redis. Not QueueEvents' waitUntilFinished: its event stream is read
 * from '$' after it connects and again after each blocking read times out, so a completion written in between is never
 * seen (a second `npm run up`, whose registration is quick, waited out its 60 s on one).
 */
async function waitForJob(queue, jobId, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = await Job.fromId(queue, jobId);
    if (!job) throw new Error(`register-template job ${jobId} is gone from the queue`);
    const state = await job.getState();
    if (state === 'completed') return job.returnvalue;
    if (state === 'failed') throw new Error(`register-template job ${jobId} failed: ${job.failedReason}`);
    if (Date.now() > deadline) throw new Error(`register-template job ${jobId} did not finish within ${timeoutMs} ms (state ${state}; is the template-builder running?)`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function main() {
  const prisma = new PrismaService(env.DATABASE_URL);
  try {
    const team = await new TeamRepository(prisma).ensure('dev');
    const keys = new ApiKeyRepository(prisma);
    let key = previousKey();
    if (!key || (await keys.authenticate(key))?.teamId !== team.id) key = (await keys.create(team.id, 'dev')).key;
    const templates = await registerTemplates();
    process.stderr.write(`[kiln] templates: ${templates.map((t) => `${t.templateId}@${t.buildId.slice(0, 12)}`).join(', ')}\n`);
    // E2B_DOMAIN alone (without the two URLs) reaches the gateway's TLS listener: https://api.<domain> and
    // https://<port>-<sandboxId>.<domain>; NODE_EXTRA_CA_CERTS makes node trust the stack's local CA for it.
    const domain = env.KILN_DOMAIN || 'kiln.localhost';
    process.stdout.write(
      [
        `E2B_API_URL=http://localhost:${env.GATEWAY_HTTP_PORT || 3000}`,
        `E2B_SANDBOX_URL=http://localhost:${env.SANDBOX_PROXY_PORT || 3080}`,
        `E2B_API_KEY=${key}`,
        `E2B_DOMAIN=${domain}`,
        ...(env.KILN_DEV_CA_FILE ? [`NODE_EXTRA_CA_CERTS=${env.KILN_DEV_CA_FILE}`] : []),
        // The admin API's token (X-Admin-Token on /nodes): the gateway's KILN_ADMIN_TOKEN, a secret apps.sh's
        // stack_env generates once and exports; without it the gateway's admin API is disabled, so no line.
        ...(env.KILN_ADMIN_TOKEN ? [`KILN_ADMIN_TOKEN=${env.KILN_ADMIN_TOKEN}`] : []),
        '',
      ].join('\n'),
    );
  } finally {
    await prisma.$disconnect();
  }
}

main().catch((error) => {
  process.stderr.write(`seed failed: ${error.message}\n`);
  process.exit(1);
});
