import 'reflect-metadata';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { Queue } from 'bullmq';
import { Template } from 'e2b';
import IORedis from 'ioredis';
import { JSONCodec, NatsConnection, connect } from 'nats';
import { LocalArtifactStore } from '@kiln/artifacts';
import { BUILD_TEMPLATE_JOB, TEMPLATE_BUILD_QUEUE, TemplateBuildDefinition } from '@kiln/contracts';
import { Subjects } from '@kiln/messaging';
import { SeededTeam, TestStack } from './support/test-stack';

jest.setTimeout(90_000);

interface Answer {
  status: number;
  headers: Headers;
  // Response JSON of many shapes; each test asserts the one it expects.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

/** The gateway refuses archives above this (TEMPLATE_UPLOAD_MAX_BYTES), so the 413 cases stay small. */
const UPLOAD_LIMIT = 256 * 1024;

let stack: TestStack;
let teamA: SeededTeam;
let teamB: SeededTeam;
let artifactDir: string;
let artifacts: LocalArtifactStore;
let nats: NatsConnection;
const cancelMessages: unknown[] = [];

async function call(method: string, path: string, options: { key?: string | null; body?: unknown } = {}): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (options.key !== null) headers['x-api-key'] = options.key ?? teamA.apiKey;
  let body: string | undefined;
  if (options.body !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(options.body);
  }
  return answerOf(await fetch(stack.gateway.apiUrl + path, { method, headers, body }));
}

async function answerOf(response: Response): Promise<Answer> {
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    // not JSON; leave as text so the assertion shows it
  }
  return { status: response.status, headers: response.headers, body: parsed };
}

/** PUTs an archive to an upload URL as the SDK does: no API key, Content-Length, no content type unless given. */
async function upload(url: string, bytes: Buffer, headers: Record<string, string> = {}): Promise<Answer> {
  return answerOf(await fetch(url, { method: 'PUT', body: bytes, headers: { 'content-length': String(bytes.length), ...headers } }));
}

beforeAll(async () => {
  artifactDir = mkdtempSync(join(tmpdir(), 'kiln-gateway-artifacts-'));
  artifacts = new LocalArtifactStore(artifactDir);
  stack = await TestStack.start({ gateway: false });
  stack.gateway = await stack.startGateway({
    KILN_ARTIFACT_DIR: artifactDir,
    KILN_SANDBOX_TOKEN_KEY: 'gateway-test-upload-signing-key-0123456789',
    TEMPLATE_UPLOAD_MAX_BYTES: String(UPLOAD_LIMIT),
  });
  teamA = await stack.seedTeam();
  teamB = await stack.seedTeam();
  await stack.templates.ensurePublicTemplate({ templateId: 'base', alias: 'base', vcpus: 1, memoryMib: 256, diskMib: 1024, envdVersion: '0.6.4', contentHash: 'base-host-build' });
  nats = await connect({ servers: stack.natsUrl });
  const codec = JSONCodec();
  const subscription = nats.subscribe(Subjects.templateBuildCancel);
  void (async () => {
    for await (const message of subscription) cancelMessages.push(codec.decode(message.data));
  })();
});

afterAll(async () => {
  await nats?.close();
  await stack?.stop();
  rmSync(artifactDir, { recursive: true, force: true });
});

/** The build id a cancel message names (Nest's NATS client wraps the payload as `{pattern, data}`). */
function cancelledBuildIds(): string[] {
  return cancelMessages.map((m) => ((m as { data?: { buildId: string } }).data ?? (m as { buildId: string })).buildId);
}

describe('template build API: create → upload → start → status → tags → delete', () => {
  let templateId: string;
  let buildId: string;
  const archive = randomBytes(100 * 1024);
  const filesHash = createHash('sha256').update('app.sh /srv/').digest('hex');

  it('POST /v3/templates makes the team a template and a waiting build', async () => {
    const created = await call('POST', '/v3/templates', { body: { name: 'my-app:v1', tags: ['stable'], cpuCount: 2, memoryMB: 1024 } });
    expect(created.status).toBe(202);
    expect(created.body).toEqual({
      templateID: expect.stringMatching(/^[a-z0-9]{20}$/),
      buildID: expect.stringMatching(/^[0-9a-f-]{36}$/),
      public: false,
      names: ['my-app'],
      aliases: ['my-app'],
      tags: ['v1', 'stable'],
    });
    ({ templateID: templateId, buildID: buildId } = created.body);
    const row = await stack.prisma.templateBuild.findUniqueOrThrow({ where: { id: buildId } });
    expect(row).toMatchObject({ templateId, state: 'waiting', vcpus: 2, memoryMib: 1024, definition: null });

    // The same name again: the same template, a new build; no tags means E2B's `default`.
    const again = await call('POST', '/v3/templates', { body: { name: 'my-app' } });
    expect(again.status).toBe(202);
    expect(again.body).toMatchObject({ templateID: templateId, tags: ['default'] });
    expect(again.body.buildID).not.toBe(buildId);
    await stack.prisma.templateBuild.delete({ where: { id: again.body.buildID } });
  });

  it('refuses bad resources and names taken by another team or a public template', async () => {
    for (const body of [{ name: 'x', memoryMB: 1025 }, { name: 'x', cpuCount: 0 }, { name: 'x', memoryMB: 64 }, { name: 'bad name' }, {}, { name: 'x', tags: ['bad tag'] }, { name: 'x', minFreeDiskMb: 4096 }]) {
      const answer = await call('POST', '/v3/templates', { body });
      expect({ body, status: answer.status, code: answer.body.code }).toEqual({ body, status: 400, code: 400 });
    }
    // minFreeDiskMb (SDK 2.51) up to the 1 GiB every build leaves free is served, more is refused naming it.
    const tooMuchFree = await call('POST', '/v3/templates', { body: { name: 'x', minFreeDiskMb: 4096 } });
    expect(tooMuchFree.body.message).toMatch(/minFreeDiskMb/);
    const withFree = await call('POST', '/v3/templates', { body: { name: 'free-disk-app', minFreeDiskMb: 512 } });
    expect(withFree.status).toBe(202);
    const taken = await call('POST', '/v3/templates', { key: teamB.apiKey, body: { name: 'my-app' } });
    expect(taken.status).toBe(403);
    expect(taken.body).toMatchObject({ code: 403, message: "template name 'my-app' is already taken" });
    expect((await call('POST', '/v3/templates', { key: teamB.apiKey, body: { name: 'base' } })).status).toBe(403);
  });

  it("GET /templates/aliases/{alias}: the owner's 200, another team's 403 (the SDK's exists() is true), unknown 404", async () => {
    expect((await call('GET', '/templates/aliases/my-app')).body).toEqual({ templateID: templateId, public: false });
    expect((await call('GET', '/templates/aliases/my-app', { key: teamB.apiKey })).status).toBe(403);
    expect((await call('GET', '/templates/aliases/nobody-has-this')).status).toBe(404);
  });

  it('files: absent → signed upload URL → PUT without a key → present', async () => {
    const link = await call('GET', `/templates/${templateId}/files/${filesHash}`);
    expect(link.status).toBe(201);
    expect(link.body).toEqual({ present: false, url: expect.stringContaining(`${stack.gateway.apiUrl}/templates/${templateId}/files/${filesHash}?token=`) });
    expect((await call('GET', `/templates/${templateId}/files/${filesHash}`, { key: teamB.apiKey })).status).toBe(404);
    expect((await call('GET', `/templates/${templateId}/files/bad%20hash`)).status).toBe(400);

    const url: string = link.body.url;
    // Forged, missing and misdirected tokens.
    expect((await upload(url.replace(/token=[^&]+/, 'token=1.2.3'), archive)).status).toBe(403);
    expect((await upload(url.replace(/\?token=.*$/, ''), archive)).status).toBe(403);
    const other = await upload(url.replace(filesHash, 'b'.repeat(64)), archive);
    expect(other).toMatchObject({ status: 403, body: { code: 403, message: expect.stringContaining('upload URL is invalid') } });
    // Too large: by Content-Length at once, and by what arrives when no length is sent (chunked).
    expect((await upload(url, randomBytes(UPLOAD_LIMIT + 1))).status).toBe(413);
    const chunked = await fetch(url, { method: 'PUT', body: Readable.toWeb(Readable.from([randomBytes(UPLOAD_LIMIT), randomBytes(1024)])) as ReadableStream, duplex: 'half' } as RequestInit);
    expect(chunked.status).toBe(413);
    expect(existsSync(join(artifactDir, 'files', teamA.teamId, filesHash))).toBe(false);

    // A client that goes away mid-upload leaves nothing behind, and the gateway keeps serving.
    await new Promise<void>((resolve) => {
      const partial = request(url, { method: 'PUT', headers: { 'content-length': '4096' } });
      partial.on('error', () => resolve());
      partial.write(randomBytes(1024), () => setTimeout(() => { partial.destroy(); resolve(); }, 100));
    });
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(existsSync(join(artifactDir, 'files', teamA.teamId, filesHash))).toBe(false);

    // Any content type, even JSON's, is stored as bytes.
    const stored = await upload(url, archive, { 'content-type': 'application/json' });
    expect(stored.status).toBe(204);
    expect(readFileSync(join(artifactDir, 'files', teamA.teamId, filesHash)).equals(archive)).toBe(true);
    const sha256 = createHash('sha256').update(archive).digest('hex');
    expect(await stack.prisma.templateFile.findUnique({ where: { teamId_filesHash: { teamId: teamA.teamId, filesHash } } })).toMatchObject({ sha256, bytes: BigInt(archive.length) });
    expect((await call('GET', `/templates/${templateId}/files/${filesHash}`)).body).toEqual({ present: true });
    // The team's upload is not another team's.
    await stack.prisma.template.create({ data: { id: 'team-b-private', teamId: teamB.teamId, aliases: { create: { alias: 'b-private' } } } });
    expect((await call('GET', `/templates/team-b-private/files/${filesHash}`, { key: teamB.apiKey })).body).toMatchObject({ present: false });
  });

  it('start: 400 naming the step or base that cannot run, then 202 and a build-template job', async () => {
    const start = (body: unknown, key?: string) => call('POST', `/v2/templates/${templateId}/builds/${buildId}`, { body, key });
    const copy = { type: 'COPY', args: ['app.sh', '/srv/', '', ''], filesHash, force: false, forceUpload: undefined, resolveSymlinks: false, gzip: true };
    const cases: Array<[unknown, string]> = [
      [{ fromTemplate: 'base', steps: [{ type: 'RUN', args: ['true'] }, { type: 'EXPOSE', args: ['80'] }] }, 'step 2 (EXPOSE): unknown step type'],
      [{ fromTemplate: 'base', steps: [{ type: 'RUN', args: [] }] }, 'step 1 (RUN): takes [command, user?], got 0 arguments'],
      [{ fromTemplate: 'base', steps: [{ ...copy, filesHash: 'c'.repeat(64) }] }, `step 1 (COPY): the files of 'app.sh' (filesHash ${'c'.repeat(64)}) were never uploaded`],
      [{ fromTemplate: 'nope' }, "fromTemplate 'nope': no such template"],
      [{ fromTemplate: 'b-private' }, "fromTemplate 'b-private': no such template"],
      [{ fromTemplate: 'my-app' }, "fromTemplate 'my-app' has no ready build"],
      [{ fromTemplate: 'base:nosuchtag' }, "fromTemplate 'base:nosuchtag': no such template"],
      [{ fromImage: 'NOT//valid' }, "fromImage 'NOT//valid' is not a valid image reference"],
      [{ fromImage: 'debian:bookworm', fromTemplate: 'base' }, 'give either fromImage or fromTemplate, not both'],
      [{ steps: [] }, 'give the base to build from'],
      [{ fromImage: 'app', fromImageRegistry: { type: 'aws', awsAccessKeyId: 'a', awsSecretAccessKey: 'b', awsRegion: 'c' } }, "fromImageRegistry type 'aws'"],
    ];
    for (const [body, message] of cases) {
      const answer = await start(body);
      expect({ body, status: answer.status, message: answer.body.message }).toEqual({ body, status: 400, message: expect.stringContaining(message) });
    }
    expect((await start({ fromTemplate: 'base' }, teamB.apiKey)).status).toBe(404);
    expect((await call('POST', `/v2/templates/${templateId}/builds/${randomBytes(16).toString('hex')}`, { body: { fromTemplate: 'base' } })).status).toBe(404);

    const definition = {
      fromTemplate: 'base',
      force: false,
      steps: [{ type: 'RUN', args: ['apt-get install -y jq', 'root'], force: false }, { type: 'ENV', args: ['GREETING', 'hi'], force: false }, copy, { type: 'WORKDIR', args: ['/srv'], force: false }, { type: 'USER', args: ['user'], force: false }],
      startCmd: 'python3 -m http.server 8000',
      readyCmd: 'ss -ltn | grep -q :8000',
    };
    const status = async () => (await call('GET', `/templates/${templateId}/builds/${buildId}/status`)).body.status;
    // E2B's statuses: `waiting` until the build is started, `building` from the start on, queued or not.
    expect(await status()).toBe('waiting');
    const accepted = await start(definition);
    expect(accepted.status).toBe(202);
    expect((await start(definition)).status).toBe(409);
    expect(await status()).toBe('building');

    const row = await stack.prisma.templateBuild.findUniqueOrThrow({ where: { id: buildId } });
    const base = await stack.prisma.templateBuild.findFirstOrThrow({ where: { templateId: 'base', state: 'ready' } });
    const stored = row.definition as unknown as TemplateBuildDefinition;
    expect(stored.baseTemplate).toEqual({ templateId: 'base', buildId: base.id, hostBuildId: 'base-host-build' });
    expect(stored.steps[2]).toEqual({ type: 'COPY', args: ['app.sh', '/srv/', '', ''], filesHash, filesSha256: createHash('sha256').update(archive).digest('hex'), force: false });
    expect(row).toMatchObject({ startCmd: definition.startCmd, readyCmd: definition.readyCmd, state: 'waiting' });

    const redis = new IORedis(stack.redisUrl, { maxRetriesPerRequest: null });
    const queue = new Queue(TEMPLATE_BUILD_QUEUE, { connection: redis });
    try {
      const job = await queue.getJob(buildId);
      expect(job).toMatchObject({ name: BUILD_TEMPLATE_JOB, data: { buildId }, id: buildId });
    } finally {
      await queue.close();
      await redis.quit();
    }
  });

  it('status: E2B TemplateBuildInfo with logs from logsOffset (100 at most), and the failing step as reason', async () => {
    const started = Date.now() - 60_000;
    await stack.prisma.templateBuildLog.createMany({
      data: Array.from({ length: 150 }, (_, seq) => ({
        buildId,
        seq,
        timestamp: new Date(started + seq * 100),
        level: seq === 149 ? 'error' : 'info',
        message: `line ${seq}`,
        step: String(Math.floor(seq / 30)),
      })),
    });
    await stack.prisma.templateBuild.update({ where: { id: buildId }, data: { state: 'building' } });
    const first = await call('GET', `/templates/${templateId}/builds/${buildId}/status`);
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ templateID: templateId, buildID: buildId, status: 'building' });
    expect(first.body.reason).toBeUndefined();
    expect(first.body.logEntries).toHaveLength(100);
    expect(first.body.logEntries[0]).toEqual({ timestamp: new Date(started).toISOString(), level: 'info', message: 'line 0', step: '0' });
    expect(first.body.logs[0]).toBe(`[${new Date(started).toISOString()}] line 0`);
    const second = await call('GET', `/templates/${templateId}/builds/${buildId}/status?logsOffset=100`);
    expect(second.body.logEntries.map((e: { message: string }) => e.message)).toEqual(Array.from({ length: 50 }, (_, i) => `line ${100 + i}`));
    expect((await call('GET', `/templates/${templateId}/builds/${buildId}/status?logsOffset=150`)).body.logEntries).toEqual([]);
    expect((await call('GET', `/templates/${templateId}/builds/${buildId}/status?logsOffset=10&limit=5`)).body.logEntries).toHaveLength(5);
    expect((await call('GET', `/templates/${templateId}/builds/${buildId}/status?level=error`)).body.logEntries.map((e: { message: string }) => e.message)).toEqual(['line 149']);
    expect((await call('GET', `/templates/${templateId}/builds/${buildId}/status?limit=101`)).status).toBe(400);
    expect((await call('GET', `/templates/${templateId}/builds/${buildId}/status`, { key: teamB.apiKey })).status).toBe(404);

    await stack.prisma.templateBuild.update({ where: { id: buildId }, data: { state: 'error', reason: 'step 4 (COPY): exit status 1', reasonStep: '4' } });
    const failed = await call('GET', `/templates/${templateId}/builds/${buildId}/status?logsOffset=150`);
    expect(failed.body).toMatchObject({ status: 'error', reason: { message: 'step 4 (COPY): exit status 1', step: '4' } });
    expect(failed.body.reason.logEntries.map((e: { message: string }) => e.message)).toEqual(Array.from({ length: 20 }, (_, i) => `line ${130 + i}`));

    const logs = await call('GET', `/templates/${templateId}/builds/${buildId}/logs?limit=3`);
    expect(logs.status).toBe(200);
    expect(logs.body.logs.map((e: { message: string }) => e.message)).toEqual(['line 0', 'line 1', 'line 2']);
    const backward = await call('GET', `/templates/${templateId}/builds/${buildId}/logs?direction=backward&limit=2&source=persistent`);
    expect(backward.body.logs.map((e: { message: string }) => e.message)).toEqual(['line 149', 'line 148']);
    const fromCursor = await call('GET', `/templates/${templateId}/builds/${buildId}/logs?cursor=${started + 1000}&limit=2`);
    expect(fromCursor.body.logs.map((e: { message: string }) => e.message)).toEqual(['line 10', 'line 11']);
    expect((await call('GET', `/templates/${templateId}/builds/${buildId}/logs?direction=sideways`)).status).toBe(400);
  });

  it('tags: assign, list, remove; name:tag resolves to the tagged build, a name alone to the newest ready one', async () => {
    // The builder would have done this: the build is ready under its own id on hosts.
    await stack.prisma.templateBuild.update({ where: { id: buildId }, data: { state: 'ready', contentHash: buildId, finishedAt: new Date() } });
    const assigned = await call('POST', '/templates/tags', { body: { target: 'my-app:v1', tags: ['prod', 'prod'] } });
    expect(assigned).toMatchObject({ status: 201, body: { tags: ['prod'], buildID: buildId } });
    expect((await call('POST', '/templates/tags', { body: { target: 'my-app:nope', tags: ['x'] } })).status).toBe(404);
    expect((await call('POST', '/templates/tags', { key: teamB.apiKey, body: { target: 'my-app', tags: ['x'] } })).status).toBe(404);
    expect((await call('POST', '/templates/tags', { body: { target: 'my-app', tags: [] } })).status).toBe(400);

    const listed = await call('GET', `/templates/${templateId}/tags`);
    expect(listed.status).toBe(200);
    expect(listed.body.map((t: { tag: string }) => t.tag).sort()).toEqual(['prod', 'stable', 'v1']);
    expect(listed.body[0]).toEqual({ tag: expect.any(String), buildID: buildId, createdAt: expect.any(String) });
    expect((await call('GET', '/templates/my-app/tags')).body).toHaveLength(3);
    expect((await call('GET', `/templates/${templateId}/tags`, { key: teamB.apiKey })).status).toBe(404);

    expect((await call('DELETE', '/templates/tags', { body: { name: 'my-app', tags: ['stable'] } })).status).toBe(204);
    expect((await call('DELETE', '/templates/tags', { body: { name: 'my-app', tags: ['stable'] } })).status).toBe(404);

    // A newer ready build: the bare name follows it, the tags stay on theirs.
    const newer = await stack.prisma.templateBuild.create({ data: { templateId, state: 'ready', contentHash: 'newer', vcpus: 2, memoryMib: 1024, diskMib: 2048, finishedAt: new Date() } });
    expect(await stack.templates.resolve('my-app:prod', teamA.teamId)).toMatchObject({ templateId, buildId, hostBuildId: buildId });
    expect(await stack.templates.resolve('my-app', teamA.teamId)).toMatchObject({ templateId, buildId: newer.id, hostBuildId: 'newer' });
    expect(await stack.templates.resolve('my-app:default', teamA.teamId)).toMatchObject({ buildId: newer.id });
    expect(await stack.templates.resolve('my-app:latest', teamA.teamId)).toMatchObject({ buildId: newer.id });
    expect(await stack.templates.resolve('my-app:stable', teamA.teamId)).toBeNull();
    expect(await stack.templates.resolve('my-app:prod', teamB.teamId)).toBeNull();

    const list = await call('GET', '/templates');
    expect(list.body.find((t: { templateID: string }) => t.templateID === templateId)).toMatchObject({
      templateID: templateId,
      buildID: newer.id,
      buildStatus: 'ready',
      buildCount: 2,
      names: ['my-app'],
      public: false,
      envdVersion: expect.any(String),
    });
  });

  it('cancel one build: cancel_requested and a NATS message; a finished build is 409', async () => {
    const another = await call('POST', '/v3/templates', { body: { name: 'my-app' } });
    const cancelled = await call('DELETE', `/templates/${templateId}/builds/${another.body.buildID}`);
    expect(cancelled.status).toBe(202);
    expect(await stack.prisma.templateBuild.findUniqueOrThrow({ where: { id: another.body.buildID } })).toMatchObject({ cancelRequested: true });
    await waitFor(() => cancelledBuildIds().includes(another.body.buildID));
    expect((await call('DELETE', `/templates/${templateId}/builds/${buildId}`)).status).toBe(409);
    expect((await call('DELETE', `/templates/${templateId}/builds/${another.body.buildID}`, { key: teamB.apiKey })).status).toBe(404);
  });

  it('delete: 409 while a sandbox uses it, then its rows and artifacts go; another team gets 404, a public template 403', async () => {
    await artifacts.write(`templates/${templateId}/${buildId}/rootfs.ext4`, Readable.from([Buffer.from('rootfs')]));
    const sandboxId = randomBytes(10).toString('hex');
    await stack.prisma.sandbox.create({
      data: { id: sandboxId, teamId: teamA.teamId, templateId, buildId, state: 'paused', vcpus: 2, memoryMib: 1024, diskMib: 2048, timeoutSeconds: 60, expiresAt: new Date(Date.now() + 60_000) },
    });
    const waiting = await call('POST', '/v3/templates', { body: { name: 'my-app' } });

    expect((await call('DELETE', `/templates/${templateId}`, { key: teamB.apiKey })).status).toBe(404);
    const inUse = await call('DELETE', `/templates/${templateId}`);
    expect(inUse).toMatchObject({ status: 409, body: { code: 409, message: expect.stringContaining('still used by 1 sandbox (running or paused)') } });

    await stack.prisma.sandbox.update({ where: { id: sandboxId }, data: { state: 'killed', endedAt: new Date() } });
    expect((await call('DELETE', '/templates/my-app')).status).toBe(204);
    expect(await stack.prisma.template.findUnique({ where: { id: templateId } })).toBeNull();
    expect(await stack.prisma.templateBuild.count({ where: { templateId } })).toBe(0);
    expect(await stack.prisma.templateAlias.findUnique({ where: { alias: 'my-app' } })).toBeNull();
    expect(await artifacts.list(`templates/${templateId}/`)).toEqual([]);
    await waitFor(() => cancelledBuildIds().includes(waiting.body.buildID));
    expect((await call('DELETE', `/templates/${templateId}`)).status).toBe(404);
    expect((await call('GET', `/templates/${templateId}/tags`)).status).toBe(404);

    const base = await call('DELETE', '/templates/base');
    expect(base).toMatchObject({ status: 403, body: { code: 403 } });
    // The name is free again.
    expect((await call('POST', '/v3/templates', { key: teamB.apiKey, body: { name: 'my-app' } })).status).toBe(202);
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('through the official SDK (e2b): Template.buildInBackground, getBuildStatus, exists, tags', () => {
  it('requests, uploads the copied files, starts the build, and reads its status and tags', async () => {
    const context = mkdtempSync(join(tmpdir(), 'kiln-sdk-context-'));
    try {
      writeFileSync(join(context, 'app.sh'), '#!/bin/sh\necho hi\n');
      const opts = { apiKey: teamA.apiKey, apiUrl: stack.gateway.apiUrl };
      const info = await buildInBackgroundOutsideJest(context, 'sdk-app:v1');
      expect(info).toMatchObject({ name: 'sdk-app:v1', templateId: expect.stringMatching(/^[a-z0-9]{20}$/), buildId: expect.any(String) });

      const row = await stack.prisma.templateBuild.findUniqueOrThrow({ where: { id: info.buildId } });
      const definition = row.definition as unknown as TemplateBuildDefinition;
      expect(definition.baseTemplate).toMatchObject({ templateId: 'base' });
      expect(definition.steps.map((s) => s.type)).toEqual(['RUN', 'ENV', 'COPY', 'WORKDIR', 'USER']);
      const copy = definition.steps[2];
      const stored = await stack.prisma.templateFile.findUniqueOrThrow({ where: { teamId_filesHash: { teamId: teamA.teamId, filesHash: copy.filesHash! } } });
      expect(copy.filesSha256).toBe(stored.sha256);
      expect(existsSync(join(artifactDir, 'files', teamA.teamId, copy.filesHash!))).toBe(true);
      expect(row).toMatchObject({ vcpus: 1, memoryMib: 512, startCmd: 'python3 -m http.server 8000', readyCmd: expect.stringContaining('8000') });

      // Started and queued (no builder runs here): the SDK expects `building` right after buildInBackground.
      const status = await Template.getBuildStatus(info, opts);
      expect(status).toMatchObject({ templateID: info.templateId, buildID: info.buildId, status: 'building', logEntries: [] });

      expect(await Template.exists('sdk-app', opts)).toBe(true);
      // Another team's name exists too (it is taken); an unknown one does not.
      expect(await Template.exists('sdk-app', { ...opts, apiKey: teamB.apiKey })).toBe(true);
      expect(await Template.exists('sdk-app-nobody', opts)).toBe(false);

      await stack.prisma.templateBuild.update({ where: { id: info.buildId }, data: { state: 'ready', contentHash: info.buildId } });
      expect(await Template.assignTags('sdk-app:v1', ['prod'], opts)).toEqual({ buildId: info.buildId, tags: ['prod'] });
      expect((await Template.getTags(info.templateId, opts)).map((t) => t.tag).sort()).toEqual(['prod', 'v1']);
      await Template.removeTags('sdk-app', ['prod'], opts);
      expect((await Template.getTags(info.templateId, opts)).map((t) => t.tag)).toEqual(['v1']);

      // A definition the builder cannot run is the SDK's BuildError naming the base.
      await expect(Template.buildInBackground(Template().fromTemplate('no-such-base'), 'sdk-app', opts)).rejects.toThrow("fromTemplate 'no-such-base': no such template");
      await expect(Template.buildInBackground(Template().fromAWSRegistry('1.dkr.ecr.x/app', { accessKeyId: 'a', secretAccessKey: 'b', region: 'c' }), 'sdk-app', opts)).rejects.toThrow(
        "fromImageRegistry type 'aws' (AWS ECR) is not supported",
      );
    } finally {
      rmSync(context, { recursive: true, force: true });
    }
  });
});

/**
 * `Template.buildInBackground` of the definition, run by the SDK in a plain node process: hashing and
 * archiving the copied files uses dynamic imports, which Jest's module sandbox refuses.
 */
async function buildInBackgroundOutsideJest(contextDir: string, name: string): Promise<{ name: string; templateId: string; buildId: string }> {
  const script = `
    import { Template, waitForPort } from 'e2b';
    const template = Template({ fileContextPath: process.env.CONTEXT_DIR })
      .fromTemplate('base')
      .runCmd('apt-get install -y jq', { user: 'root' })
      .setEnvs({ GREETING: 'hi' })
      .copy('app.sh', '/srv/')
      .setWorkdir('/srv')
      .setUser('user')
      .setStartCmd('python3 -m http.server 8000', waitForPort(8000));
    const info = await Template.buildInBackground(template, process.env.TEMPLATE_NAME, { cpuCount: 1, memoryMB: 512 });
    process.stdout.write(JSON.stringify(info));
  `;
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
    cwd: join(__dirname, '..', '..', '..'),
    env: { ...process.env, E2B_API_URL: stack.gateway.apiUrl, E2B_API_KEY: teamA.apiKey, CONTEXT_DIR: contextDir, TEMPLATE_NAME: name },
    timeout: 60_000,
  });
  return JSON.parse(stdout);
}
