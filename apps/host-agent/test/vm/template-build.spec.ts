import 'reflect-metadata';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Module, type INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ARTIFACT_STORE, type ArtifactStore } from '@kiln/artifacts';
import { ConfigModule, HostAgentEnv, loadConfig } from '@kiln/config';
import { MessagingModule } from '@kiln/messaging';
import type { BuildStep, BuildTemplateEvent, BuildTemplateRequest } from '@kiln/proto/hostagent';
import { TelemetryModule } from '@kiln/telemetry';
import { eventually, startPrivateNats, type PrivateServer } from '@kiln/testing';
import { hostResourceModules } from '../../src/host-modules';
import { NetworkSlotPool } from '../../src/network';
import { SandboxManager, type LiveSandbox } from '../../src/sandbox/sandbox-manager.service';
import { SandboxModule } from '../../src/sandbox/sandbox.module';
import { TemplateBuildService } from '../../src/template-build';
import { removeSuiteNetwork, runInSandbox } from './sandbox-agent-harness';
import { DATA_DIR } from './vm-test-context';

/**
 * Template builds on real VMs, through the build service as the agent wires it (its gRPC method returns the same
 * stream): a cold build from `base` with every step type and a start/ready command, a sandbox restored from the
 * result, a rebuild from the cache, a failing step and a cancelled build, each leaving nothing behind.
 * A data dir of its own sharing the built templates; slot prefix kttb, 10.226.0.0/24.
 */
const TEST_DATA_DIR = '/var/lib/kiln-test-template-build';
const SUITE = { prefix: 'kttb', cidr: '10.226.0.0/24', hostId: 'template-build-test' };
/** Template ids of this suite (under the shared templates dir): removed before and after. */
const TEMPLATE = 'tbtest-app';
const FAILING = 'tbtest-fail';
const DERIVED = 'tbtest-derived';

interface BuildAgent {
  app: INestApplicationContext;
  builds: TemplateBuildService;
  manager: SandboxManager;
  pool: NetworkSlotPool;
  artifacts: ArtifactStore;
}

async function startBuildAgent(nats: PrivateServer, artifactDir: string): Promise<BuildAgent> {
  mkdirSync(TEST_DATA_DIR, { recursive: true });
  for (const shared of ['templates', 'images', 'cache', 'vmm']) {
    const link = join(TEST_DATA_DIR, shared);
    if (!existsSync(link) && existsSync(join(DATA_DIR, shared))) symlinkSync(join(DATA_DIR, shared), link);
  }
  const env = loadConfig(HostAgentEnv, {
    ...process.env,
    NATS_URL: nats.url,
    KILN_DATA_DIR: TEST_DATA_DIR,
    KILN_ARTIFACT_DIR: artifactDir,
    KILN_NETWORK_PREFIX: SUITE.prefix,
    KILN_SLOT_CIDR: SUITE.cidr,
    KILN_NETWORK_PREFILL: '1',
    KILN_MAX_SANDBOXES: '4',
    KILN_CLONE_POOL_SIZE: '0',
    KILN_HOST_ID: SUITE.hostId,
    KILN_HOST_STATE_KEY: `${SUITE.hostId}-host-state-key`.padEnd(32, '0'),
    KILN_TEMPLATE_READY_TIMEOUT_SECONDS: '10',
  });
  const host = hostResourceModules(env);
  @Module({
    imports: [
      ConfigModule.forRoot(HostAgentEnv, env),
      TelemetryModule.forRoot({ service: 'host-agent-test', logLevel: 'warn' }),
      MessagingModule.forRoot({ natsUrl: nats.url, name: 'host-agent-test' }),
      SandboxModule.register(host),
      host.templateBuilds,
    ],
  })
  class TemplateBuildTestModule {}
  const app = await NestFactory.createApplicationContext(TemplateBuildTestModule, { logger: ['error', 'warn'], abortOnError: false });
  app.enableShutdownHooks();
  return { app, builds: app.get(TemplateBuildService), manager: app.get(SandboxManager), pool: app.get(NetworkSlotPool), artifacts: app.get(ARTIFACT_STORE) };
}

interface BuildOutcome {
  events: BuildTemplateEvent[];
  logs: string[];
  error?: Error;
  durationMs: number;
}

function collect(agent: BuildAgent, request: BuildTemplateRequest): Promise<BuildOutcome> {
  const started = performance.now();
  const events: BuildTemplateEvent[] = [];
  return new Promise((resolve) => {
    const done = (error?: Error) =>
      resolve({ events, logs: events.filter((e) => e.log).map((e) => e.log!.message), error, durationMs: performance.now() - started });
    agent.builds.build(request).subscribe({ next: (event) => events.push(event), error: (error: Error) => done(error), complete: () => done() });
  });
}

const step = (type: string, args: string[], extra: Partial<BuildStep> = {}): BuildStep => ({ type, args, filesHash: '', filesPath: '', filesSha256: '', force: false, ...extra });

function buildRequest(buildId: string, steps: BuildStep[], extra: Partial<BuildTemplateRequest> = {}): BuildTemplateRequest {
  return {
    templateId: TEMPLATE,
    buildId,
    base: { template: { templateId: 'base', buildId: '' }, image: undefined, registry: undefined },
    steps,
    startCmd: '',
    readyCmd: '',
    vcpus: 1,
    memoryMib: 512,
    diskMib: 0,
    force: false,
    ...extra,
  };
}

/** No build VM process, no leased slot, no scratch space: what every build must leave, however it ended. */
async function expectNothingLeft(agent: BuildAgent): Promise<void> {
  await eventually(
    'the build VM, slot and scratch space to be gone',
    async () => {
      const vms = execFileSync('ps', ['-eo', 'args']).toString().split('\n').filter((line) => /qemu-system/.test(line) && / build-tbtest/.test(line));
      const scratch = await readdir(join(TEST_DATA_DIR, 'build-cache', 'tmp')).catch(() => []);
      return vms.length === 0 && agent.pool.stats().leased === 0 && scratch.length === 0;
    },
    { timeoutMs: 30_000, intervalMs: 200 },
  );
}

function httpGet(live: LiveSandbox, port = 8000): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: live.slot!.hostAddress, port, path: '/', timeout: 20_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

async function removeTestTemplates(): Promise<void> {
  for (const id of [TEMPLATE, FAILING, DERIVED]) await rm(join(DATA_DIR, 'templates', id), { recursive: true, force: true });
}

describe('template builds (real VMs)', () => {
  let nats: PrivateServer;
  let agent: BuildAgent;
  let artifactDir: string;
  let copyStep: BuildStep;
  let coldMs = 0;

  beforeAll(async () => {
    nats = await startPrivateNats();
    await removeTestTemplates();
    for (const dir of ['sandboxes', 'clones', 'checkpoints', 'build-cache']) await rm(join(TEST_DATA_DIR, dir), { recursive: true, force: true });
    artifactDir = await mkdtemp(join(tmpdir(), 'kiln-tb-artifacts-'));
    agent = await startBuildAgent(nats, artifactDir);
    // The build context as the gateway stores an upload: a tar.gz under files/<team>/<hash>.
    const context = await mkdtemp(join(tmpdir(), 'kiln-tb-context-'));
    await writeFile(join(context, 'app.sh'), '#!/bin/sh\necho app says hi\n', { mode: 0o755 });
    execFileSync('tar', ['-czf', join(context, 'context.tar.gz'), '-C', context, 'app.sh']);
    const stored = await agent.artifacts.writeFile('files/team-tb/ctxhash1', join(context, 'context.tar.gz'));
    await rm(context, { recursive: true, force: true });
    copyStep = step('COPY', ['app.sh', '/srv/'], { filesHash: 'ctxhash1', filesPath: 'files/team-tb/ctxhash1', filesSha256: stored.sha256 });
  });

  afterAll(async () => {
    for (const live of agent?.manager.list() ?? []) await agent.manager.destroy(live.record.sandboxId).catch(() => undefined);
    await agent?.app.close();
    await nats?.stop();
    await removeSuiteNetwork(SUITE);
    await removeTestTemplates();
    for (const dir of ['sandboxes', 'clones', 'build-cache']) await rm(join(TEST_DATA_DIR, dir), { recursive: true, force: true });
    if (artifactDir) await rm(artifactDir, { recursive: true, force: true });
  });

  const definition = () => [
    step('RUN', ['echo "made by RUN as $(id -un)" | tee /opt/run.txt', 'root']),
    step('ENV', ['GREETING', 'hi']),
    copyStep,
    step('WORKDIR', ['/srv']),
    step('USER', ['user']),
  ];
  const startAndReady = { startCmd: 'python3 -m http.server 8000', readyCmd: 'curl -sf localhost:8000 >/dev/null' };

  it('builds from base with RUN, ENV, COPY, WORKDIR, USER and a start command; a sandbox of it has them all, its server up at once', async () => {
    const outcome = await collect(agent, buildRequest('build-cold', definition(), startAndReady));
    coldMs = outcome.durationMs;
    console.log(`cold build steps (s): ${outcome.events.filter((e) => e.step).map((e) => `${e.step!.step}=${(e.step!.durationMs / 1000).toFixed(1)}`).join(' ')}`);
    expect(outcome.error).toBeUndefined();
    const failed = outcome.events.find((e) => e.failed);
    expect(failed).toBeUndefined();
    // The RUN's output is streamed as step 1's log.
    expect(outcome.events.some((e) => e.log?.step === 1 && e.log.message === 'made by RUN as root')).toBe(true);
    expect(outcome.events.filter((e) => e.step).map((e) => [e.step!.step, e.step!.cached])).toEqual([
      [0, true],
      [1, false],
      [2, true],
      [3, false],
      [4, true],
      [5, true],
      [6, false],
    ]);
    const result = outcome.events.at(-1)!.result!;
    expect(result).toMatchObject({ envs: { GREETING: 'hi' }, workdir: '/srv', user: 'user', ...startAndReady, vcpus: 1, memoryMib: 512 });
    expect(result.diskMib).toBeGreaterThan(1024);
    expect(result.artifacts.map((a) => a.name).sort()).toEqual(['initramfs.cpio.gz', 'rootfs.ext4', 'template.json', 'vmlinuz']);
    for (const artifact of result.artifacts) {
      expect(await agent.artifacts.stat(`templates/${TEMPLATE}/build-cold/${artifact.name}`)).toEqual({ key: `templates/${TEMPLATE}/build-cold/${artifact.name}`, bytes: artifact.bytes, sha256: artifact.sha256 });
    }
    const manifest = JSON.parse(readFileSync(join(DATA_DIR, 'templates', TEMPLATE, 'build-cold', 'template.json'), 'utf8'));
    expect(manifest).toMatchObject({ envs: { GREETING: 'hi' }, workdir: '/srv', user: 'user', ...startAndReady });
    await expectNothingLeft(agent);

    const live = await agent.manager.create({
      sandboxId: 'tbsandbox',
      templateId: TEMPLATE,
      buildId: 'build-cold',
      teamId: 'tb',
      envVars: { FROM_CREATE: 'yes' },
      metadata: {},
      envdAccessToken: 'token-tbsandbox',
    });
    // The start command was running in the snapshot: the server answers straight away.
    expect(await httpGet(live)).toBe(200);
    expect(await runInSandbox(live, 'cat /opt/run.txt')).toBe('made by RUN as root\n');
    expect(await runInSandbox(live, 'echo "$GREETING $FROM_CREATE"; pwd; id -un; stat -c "%U %a" /srv/app.sh; /srv/app.sh')).toBe(
      'hi yes\n/srv\nuser\nroot 755\napp says hi\n',
    );
    await agent.manager.destroy('tbsandbox');
  });

  it('rebuilds an unchanged definition from the cache, every step CACHED, at least 5x faster; its sandboxes work the same', async () => {
    const outcome = await collect(agent, buildRequest('build-cached', definition(), startAndReady));
    expect(outcome.error).toBeUndefined();
    expect(outcome.events.find((e) => e.failed)).toBeUndefined();
    for (const n of [1, 2, 3, 4, 5]) expect(outcome.logs.some((line) => line.startsWith(`CACHED [step ${n}]`))).toBe(true);
    expect(outcome.logs.some((line) => line.startsWith('CACHED [finalize]'))).toBe(true);
    expect(outcome.events.filter((e) => e.step && e.step.step >= 1).every((e) => e.step!.cached)).toBe(true);
    const result = outcome.events.at(-1)!.result!;
    expect(result.envs).toEqual({ GREETING: 'hi' });
    expect(result.artifacts.map((a) => a.name).sort()).toEqual(['initramfs.cpio.gz', 'rootfs.ext4', 'template.json', 'vmlinuz']);
    console.log(`template build: cold ${(coldMs / 1000).toFixed(1)} s, cached ${(outcome.durationMs / 1000).toFixed(1)} s`);
    expect(outcome.durationMs).toBeLessThan(coldMs / 5);
    await expectNothingLeft(agent);

    const live = await agent.manager.create({ sandboxId: 'tbcached', templateId: TEMPLATE, buildId: 'build-cached', teamId: 'tb', envVars: {}, metadata: {}, envdAccessToken: 'token-tbcached' });
    expect(await httpGet(live)).toBe(200);
    expect(await runInSandbox(live, 'cat /opt/run.txt; echo $GREETING; pwd; id -un')).toBe('made by RUN as root\nhi\n/srv\nuser\n');
    await agent.manager.destroy('tbcached');
  });

  it('builds on a built template: its envs, workdir and user carry over to the steps and the result', async () => {
    const outcome = await collect(agent, {
      ...buildRequest('build-derived', [step('RUN', ['echo "$GREETING from $(pwd) as $(id -un)"'])], { templateId: DERIVED }),
      base: { template: { templateId: TEMPLATE, buildId: 'build-cold' }, image: undefined, registry: undefined },
    });
    expect(outcome.error).toBeUndefined();
    expect(outcome.events.find((e) => e.failed)).toBeUndefined();
    expect(outcome.events.some((e) => e.log?.step === 1 && e.log.message === 'hi from /srv as user')).toBe(true);
    expect(outcome.events.at(-1)!.result).toMatchObject({ envs: { GREETING: 'hi' }, workdir: '/srv', user: 'user', startCmd: '' });
    await expectNothingLeft(agent);
  });

  it('a changed last step rebuilds only that step; RUN false fails there with its exit code and leaves no VM, slot, temp file or template', async () => {
    const outcome = await collect(agent, buildRequest('build-fails', [...definition(), step('RUN', ['echo about to fail; false'])], { templateId: FAILING, ...startAndReady }));
    expect(outcome.error).toBeUndefined();
    for (const n of [1, 2, 3, 4, 5]) expect(outcome.logs.some((line) => line.startsWith(`CACHED [step ${n}]`))).toBe(true);
    expect(outcome.logs.some((line) => line.startsWith('[step 6] RUN'))).toBe(true);
    const failed = outcome.events.at(-1)!.failed!;
    expect(failed.step).toBe(6);
    expect(failed.message).toMatch(/step 6 \(RUN\).*exited with code 1/);
    expect(outcome.events.some((e) => e.log?.step === 6 && e.log.message === 'about to fail')).toBe(true);
    expect(outcome.events.some((e) => e.result)).toBe(false);
    await expectNothingLeft(agent);
    const failingDir = join(DATA_DIR, 'templates', FAILING);
    expect(existsSync(failingDir) ? readdirSync(failingDir) : []).toEqual([]);
  });

  it('a ready command that never succeeds fails the finalize step with its output, and leaves nothing behind', async () => {
    const outcome = await collect(
      agent,
      buildRequest('build-never-ready', [step('ENV', ['A', '1'])], { templateId: FAILING, startCmd: 'echo starting; sleep 1000', readyCmd: 'echo not ready yet; false' }),
    );
    expect(outcome.error).toBeUndefined();
    const failed = outcome.events.at(-1)!.failed!;
    expect(failed.step).toBe(2);
    expect(failed.message).toMatch(/step 2 \(start\/ready\): ready command did not succeed within 10 s/);
    expect(outcome.logs).toContain('not ready yet');
    await expectNothingLeft(agent);
    const failingDir = join(DATA_DIR, 'templates', FAILING);
    expect(existsSync(failingDir) ? readdirSync(failingDir) : []).toEqual([]);
    expect(await agent.artifacts.list(`templates/${FAILING}/`)).toEqual([]);
  });

  it('a cancelled build stops its step and cleans up', async () => {
    const events: BuildTemplateEvent[] = [];
    const subscription = agent.builds
      .build(buildRequest('build-cancel', [step('RUN', ['echo sleeping; sleep 600'])], { templateId: FAILING, force: true }))
      .subscribe({ next: (event) => events.push(event), error: () => undefined });
    await eventually('the step to be running', () => events.some((e) => e.log?.message === 'sleeping'), { timeoutMs: 120_000, intervalMs: 100 });
    subscription.unsubscribe();
    await expectNothingLeft(agent);
    expect(existsSync(join(DATA_DIR, 'templates', FAILING, 'build-cancel'))).toBe(false);
  });
});
