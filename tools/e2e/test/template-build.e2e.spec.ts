import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Sandbox, Template } from 'e2b';
import { ROOT, StackInfo, readStack } from '../harness/stack-harness';
import { buildAndPushImage, startRegistry } from '../../../apps/host-agent/test/template-build/base-layers-fixtures';

const execFileAsync = promisify(execFile);

/** What the official SDK's Template.build reported, run in a process of its own (harness/sdk-template-build.mjs). */
interface SdkBuild {
  logs: string[];
  seconds: number;
  result?: { templateId: string; buildId: string };
  error?: { name: string; message: string };
}

/**
 * Issue 14's acceptance against the real stack (real build VMs): a template built from `base` through the official
 * e2b SDK with every kind of step, started the moment a sandbox exists; the layer cache (an unchanged rebuild reuses
 * every step, a changed last step rebuilds only that step); a failing step and a cancelled build leave nothing
 * behind; the same definition as a Dockerfile through the `kiln` CLI, `FROM debian:bookworm`, and an OCI image from a
 * local registry (Debian's docker-registry) whose upper layer deletes a file of the lower one.
 */
describe('template builds through the official SDK and the kiln CLI (real stack, real build VMs)', () => {
  let stack: StackInfo;
  let opts: { apiKey: string; apiUrl: string; sandboxUrl: string; domain: string };
  let context: string;
  const made: Sandbox[] = [];

  beforeAll(() => {
    stack = readStack();
    opts = { apiKey: stack.apiKey, apiUrl: stack.apiUrl, sandboxUrl: stack.sandboxUrl, domain: stack.domain };
    context = mkdtempSync(join(tmpdir(), 'kiln-template-context-'));
    writeFileSync(join(context, 'app.sh'), '#!/bin/sh\necho "app says $GREETING"\n', { mode: 0o755 });
  });

  afterAll(async () => {
    for (const sandbox of made) await sandbox.kill().catch(() => undefined);
    rmSync(context, { recursive: true, force: true });
  });

  const create = async (template: string) => {
    const sandbox = await Sandbox.create(template, { ...opts, timeoutMs: 300_000 });
    made.push(sandbox);
    return sandbox;
  };

  /** The definition in the SDK's builder; `lastStep` varies the last filesystem step for the cache test. */
  const definition = (lastStep = 'echo one > /srv/marker') => `
    export default ({ Template, waitForPort }) =>
      Template({ fileContextPath: ${JSON.stringify(context)} })
        .fromTemplate('base')
        .runCmd('apt-get install -y jq', { user: 'root' })
        .setEnvs({ GREETING: 'hi' })
        .copy('app.sh', '/srv/')
        .runCmd(${JSON.stringify(lastStep)}, { user: 'root' })
        .setWorkdir('/srv')
        .setUser('user')
        .setStartCmd('python3 -m http.server 8000', waitForPort(8000));
  `;

  /** Template.build of a definition module (its default export gets the e2b module) in a process of its own. */
  async function sdkBuild(source: string, name: string, background = false): Promise<SdkBuild> {
    const module = join(context, `definition-${Date.now()}-${Math.random().toString(16).slice(2)}.mjs`);
    writeFileSync(module, source);
    try {
      const args = [join(ROOT, 'tools/e2e/harness/sdk-template-build.mjs'), module, name, JSON.stringify({ ...opts, cpuCount: 1, memoryMB: 512 })];
      if (background) args.push('background');
      const { stdout } = await execFileAsync('node', args, { cwd: ROOT, maxBuffer: 64 * 1024 * 1024, timeout: 600_000 });
      const build: SdkBuild = { logs: [], seconds: 0 };
      for (const line of stdout.split('\n').filter(Boolean)) {
        const event = JSON.parse(line) as { log?: { message: string }; result?: SdkBuild['result'] & { seconds: number }; error?: SdkBuild['error'] };
        if (event.log) build.logs.push(event.log.message);
        if (event.result) {
          build.result = event.result;
          build.seconds = event.result.seconds;
        }
        if (event.error) build.error = event.error;
      }
      return build;
    } finally {
      rmSync(module, { force: true });
    }
  }

  /** `npx kiln template build …` (the repo's CLI) in plain-output mode; its exit status and output. */
  async function kiln(args: string[]): Promise<{ status: number; output: string }> {
    const env = { ...process.env, E2B_API_KEY: stack.apiKey, E2B_API_URL: stack.apiUrl, E2B_DOMAIN: stack.domain };
    return execFileAsync('node', [join(ROOT, 'tools/cli/bin/kiln.cjs'), 'template', 'build', '--plain', ...args], { cwd: ROOT, env, maxBuffer: 64 * 1024 * 1024, timeout: 900_000 }).then(
      ({ stdout, stderr }) => ({ status: 0, output: `${stdout}\n${stderr}` }),
      (error: { code?: number; stdout?: string; stderr?: string }) => ({ status: typeof error.code === 'number' ? error.code : -1, output: `${error.stdout ?? ''}\n${error.stderr ?? ''}` }),
    );
  }

  /** The host agent's lines for filesystem steps (RUN, COPY) reused from the layer cache. */
  const cachedFilesystemSteps = (logs: string[]) => logs.filter((line) => /^CACHED \[step \d+\] (RUN|COPY)/.test(line));
  const cachedFinalization = (logs: string[]) => logs.some((line) => line.startsWith('CACHED [finalize]'));

  /** GET of a path on the sandbox's port 8000 through the traffic listener, as any HTTP client reaches it. */
  const viaTrafficListener = (sandboxId: string, path: string) =>
    fetch(`${stack.sandboxUrl}${path}`, { headers: { 'E2b-Sandbox-Id': sandboxId, 'E2b-Sandbox-Port': '8000' }, signal: AbortSignal.timeout(30_000) });

  let cold: SdkBuild;

  it('Template.build from base with RUN, ENV, COPY, WORKDIR, USER and a start command: a sandbox has all of it and its server answers at once', async () => {
    cold = await sdkBuild(definition(), 'acceptance-app');
    expect(cold.error).toBeUndefined();
    expect(cachedFilesystemSteps(cold.logs)).toEqual([]);
    expect(cachedFinalization(cold.logs)).toBe(false);

    const sandbox = await create('acceptance-app');
    // The server was started before the template's memory was saved: it answers through the traffic listener as
    // soon as the create returns, with nothing started by the test.
    const page = await viaTrafficListener(sandbox.sandboxId, '/app.sh');
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('app says');

    const probe = await sandbox.commands.run('command -v jq; echo "$GREETING"; pwd; whoami; /srv/app.sh; cat /srv/marker');
    expect(probe.stdout.trim().split('\n')).toEqual(['/usr/bin/jq', 'hi', '/srv', 'user', 'app says hi', 'one']);
    expect(await Template.exists('acceptance-app', opts)).toBe(true);
  });

  it('an unchanged rebuild reuses every step and is at least 10x faster; a changed last step rebuilds only that step', async () => {
    const cached = await sdkBuild(definition(), 'acceptance-app');
    expect(cached.error).toBeUndefined();
    // RUN, COPY, RUN from the layer cache, and the finalization (rootfs and snapshot of the identical earlier build).
    expect(cachedFilesystemSteps(cached.logs)).toHaveLength(3);
    expect(cachedFinalization(cached.logs)).toBe(true);
    expect(cold.seconds / cached.seconds).toBeGreaterThanOrEqual(10);

    const changed = await sdkBuild(definition('echo two > /srv/marker'), 'acceptance-app');
    expect(changed.error).toBeUndefined();
    // RUN apt-get and COPY are reused; the changed RUN is built again, and the result is new (no cached finalization).
    expect(cachedFilesystemSteps(changed.logs).map((line) => /\[step (\d+)\]/.exec(line)?.[1])).toEqual(['1', '3']);
    expect(changed.logs.some((line) => /^\[step 4\] RUN echo two/.test(line))).toBe(true);
    expect(cachedFinalization(changed.logs)).toBe(false);
    const sandbox = await create('acceptance-app');
    expect((await sandbox.commands.run('cat /srv/marker')).stdout.trim()).toBe('two');
  });

  it('RUN false ends the build in error naming the step, with its output in the logs, and leaves no VM, slot or temp file', async () => {
    const failing = await sdkBuild(`export default ({ Template }) => Template().fromTemplate('base').runCmd('echo about to fail; false');`, 'acceptance-failing');
    expect(failing.error?.name).toBe('BuildError');
    expect(failing.error?.message).toMatch(/step 1/i);
    expect(failing.logs.some((line) => line.includes('about to fail'))).toBe(true);
    await expectNoBuildLeftovers();
  });

  it('a cancelled build stops and cleans up the same way', async () => {
    const started = await sdkBuild(`export default ({ Template }) => Template().fromTemplate('base').runCmd('sleep 600');`, 'acceptance-cancelled', true);
    expect(started.error).toBeUndefined();
    const { templateId, buildId } = started.result!;
    // Until the step runs in its build VM.
    await waitFor(async () => (await buildStatus(templateId, buildId)).logEntries.some((entry) => entry.message.includes('sleep 600')));
    const cancel = await fetch(`${stack.apiUrl}/templates/${templateId}/builds/${buildId}`, { method: 'DELETE', headers: { 'X-API-Key': stack.apiKey } });
    expect(cancel.status).toBe(202);
    await waitFor(async () => ['error', 'ready'].includes((await buildStatus(templateId, buildId)).status));
    const final = await buildStatus(templateId, buildId);
    expect(final.status).toBe('error');
    expect(final.reason?.message).toMatch(/cancel/i);
    await expectNoBuildLeftovers();
  });

  it('the same definition as a Dockerfile FROM base through the kiln CLI', async () => {
    writeFileSync(
      join(context, 'Dockerfile'),
      [
        '# The acceptance definition, as a Dockerfile',
        'FROM base',
        'USER root',
        'RUN apt-get install -y jq',
        'ENV GREETING=hi',
        'COPY app.sh /srv/',
        'WORKDIR /srv',
        'USER user',
        'CMD python3 -m http.server 8000',
        '',
      ].join('\n'),
    );
    const built = await kiln(['-f', join(context, 'Dockerfile'), '-n', 'acceptance-dockerfile', '--context', context, '--ready-cmd', '[ -n "$(ss -Htuln sport = :8000)" ]']);
    expect(built.output).toContain('acceptance-dockerfile');
    expect(built.status).toBe(0);
    const sandbox = await create('acceptance-dockerfile');
    expect((await viaTrafficListener(sandbox.sandboxId, '/app.sh')).status).toBe(200);
    const probe = await sandbox.commands.run('command -v jq; echo "$GREETING"; pwd; whoami; /srv/app.sh');
    expect(probe.stdout.trim().split('\n')).toEqual(['/usr/bin/jq', 'hi', '/srv', 'user', 'app says hi']);

    // A failing step: a non-zero exit that names it.
    writeFileSync(join(context, 'Dockerfile.fails'), 'FROM base\nRUN echo fine\nRUN false\n');
    const failed = await kiln(['-f', join(context, 'Dockerfile.fails'), '-n', 'acceptance-dockerfile-fails', '--context', context]);
    expect(failed.status).not.toBe(0);
    expect(failed.output).toMatch(/step 2/);
    // An instruction Kiln does not support: refused naming the line, before any request.
    writeFileSync(join(context, 'Dockerfile.unsupported'), 'FROM base\nEXPOSE 8000\n');
    const refused = await kiln(['-f', join(context, 'Dockerfile.unsupported'), '-n', 'acceptance-unsupported', '--context', context]);
    expect(refused.status).toBe(2);
    expect(refused.output).toMatch(/Dockerfile\.unsupported:2: .*EXPOSE/);
  });

  it('FROM debian:bookworm (a base built with mmdebstrap) through the kiln CLI', async () => {
    writeFileSync(join(context, 'Dockerfile.debian'), 'FROM debian:bookworm\nUSER root\nRUN echo "built on $(. /etc/os-release; echo $VERSION_CODENAME)" > /built\nUSER user\n');
    const built = await kiln(['-f', join(context, 'Dockerfile.debian'), '-n', 'acceptance-debian', '--context', context]);
    expect(built.status).toBe(0);
    const sandbox = await create('acceptance-debian');
    expect((await sandbox.files.read('/built')).trim()).toBe('built on bookworm');
    expect((await sandbox.commands.run('whoami')).stdout.trim()).toBe('user');
  }, 900_000);

  it('fromImage from a registry (with credentials): the layers applied in order, the upper layer\'s whiteout removes the lower file, the image config carried', async () => {
    const scratch = mkdtempSync(join(tmpdir(), 'kiln-e2e-registry-'));
    const registry = await startRegistry(join(scratch, 'registry'), 'kiln', 'registry-password');
    try {
      buildAndPushImage(join(scratch, 'image'), `docker://${registry.address}/kiln/e2e:v1`, 'kiln:registry-password', 'e2e');
      const built = await sdkBuild(
        `export default ({ Template }) => Template().fromImage('${registry.address}/kiln/e2e:v1', { username: 'kiln', password: 'registry-password' });`,
        'acceptance-image',
      );
      expect(built.error).toBeUndefined();
      const sandbox = await create('acceptance-image');
      expect((await sandbox.files.read('/srv/upper.txt')).trim()).toBe('upper e2e');
      expect((await sandbox.files.read('/data/lower.txt')).trim()).toBe('lower e2e');
      expect(await sandbox.files.exists('/gone.txt')).toBe(false);
      // The image's Env is the template's: the guest agent's defaults (read without a shell: the image has none but busybox).
      const defaults = JSON.parse(await sandbox.files.read('/etc/kiln/template.json')) as { envs: Record<string, string> };
      expect(defaults.envs.GREETING).toBe('hello world');
    } finally {
      await registry.stop();
      rmSync(scratch, { recursive: true, force: true });
    }
  });

  async function buildStatus(templateId: string, buildId: string) {
    return Template.getBuildStatus({ templateId, buildId }, opts);
  }

  async function waitFor(condition: () => Promise<boolean>, timeoutMs = 170_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await condition())) {
      if (Date.now() > deadline) throw new Error('condition not met in time');
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
  }

  /** No build VM process, no build scratch dir left on the stack's host (its build-cache/tmp is empty). */
  async function expectNoBuildLeftovers(): Promise<void> {
    const buildVms = () =>
      readdirSync('/proc')
        .filter((pid) => /^\d+$/.test(pid))
        .filter((pid) => {
          try {
            const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
            return cmdline.startsWith('qemu-system') && cmdline.includes(join(stack.dataDir, 'build-cache'));
          } catch {
            return false;
          }
        });
    const scratch = () => {
      try {
        return readdirSync(join(stack.dataDir, 'build-cache', 'tmp'));
      } catch {
        return [];
      }
    };
    await waitFor(async () => buildVms().length === 0 && scratch().length === 0, 30_000).catch(() => undefined);
    expect(buildVms()).toEqual([]);
    expect(scratch()).toEqual([]);
  }
});
