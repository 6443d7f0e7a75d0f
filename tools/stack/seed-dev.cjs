#!/usr/bin/env node
// Seeds the dev stack: a `dev` team with an API key, and every template found in the
// host's template store registered through the template-builder's queue. Prints the
// lines of .kiln/dev.env on stdout (with the admin API's token when the stack set one). Reuses a still-valid key from an earlier run.
'use strict';
require('reflect-metadata');
const { existsSync, readFileSync, readdirSync } = require('node:fs');
const { join } = require('node:path');
const { Queue, QueueEvents } = require('bullmq');
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
  const eventsRedis = redis.duplicate();
  const queue = new Queue(TEMPLATE_BUILD_QUEUE, { connection: redis });
  const events = new QueueEvents(TEMPLATE_BUILD_QUEUE, { connection: eventsRedis });
  try {
    await events.waitUntilReady();
    const registered = [];
    for (const manifestPath of manifests) {
      const job = await queue.add('register-template', { manifestPath }, { removeOnComplete: true, removeOnFail: 50 });
      registered.push(await job.waitUntilFinished(events, 60_000));
    }
    return registered;
  } finally {
    await events.close();
    await queue.close();
    await redis.quit();
    await eventsRedis.quit();
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
