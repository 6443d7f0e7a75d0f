import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { BuildScript, ScriptedTemplateApi } from './scripted-template-api';

const REPO_ROOT = resolve(__dirname, '..', '..', '..');
const KILN_BIN = join(REPO_ROOT, 'tools', 'cli', 'bin', 'kiln.cjs');

interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built `kiln` bin as a process (stdout is a pipe, so the output is the plain, CI form). */
function runKiln(args: string[], options: { cwd: string; env: Record<string, string> }): Promise<CliRun> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [KILN_BIN, ...args], {
      cwd: options.cwd,
      // Only what the test chooses: no E2B_* or KILN_STATE of the machine running the test leaks in.
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** Log lines in the template builder's format: `[base]`, `[n/N] TYPE args`, `CACHED …`, `… done in`, `[finalize]`. */
const READY_SCRIPT: BuildScript = {
  logs: [
    { level: 'info', message: '[base] template base (build 1)', step: '0' },
    { level: 'info', message: 'CACHED [1/5] RUN apt-get install -y jq', step: '1' },
    { level: 'info', message: '[2/5] ENV GREETING hi done in 0.1 s', step: '2' },
    { level: 'info', message: '[3/5] COPY app.sh /srv/ user', step: '3' },
    { level: 'info', message: '[finalize] template snapshot', step: '6' },
  ],
  outcome: { status: 'ready' },
};

const DOCKERFILE = [
  '# syntax=docker/dockerfile:1',
  'FROM base',
  'ARG GREETING=hi',
  'RUN apt-get install -y jq',
  'ENV GREETING=$GREETING',
  'COPY --chown=user app.sh /srv/',
  'WORKDIR /srv',
  'USER user',
  'CMD ["python3", "-m", "http.server", "8000"]',
  '',
].join('\n');

describe('kiln template build against a scripted stand-in for E2B template routes', () => {
  let workDir: string;
  let stateDir: string;
  let api: ScriptedTemplateApi | undefined;

  beforeAll(() => {
    // The test runs the bin as users do, so the CLI is compiled first (incrementally: quick when unchanged).
    const tsc = spawnSync(process.execPath, [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-b', 'tools/cli/tsconfig.json'], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
    });
    if (tsc.status !== 0) throw new Error(`building the CLI failed:\n${tsc.stdout}${tsc.stderr}`);
  }, 120_000);

  beforeEach(() => {
    workDir = mkdtempSync(join(tmpdir(), 'kiln-cli-build-'));
    // An empty state dir: the developer's .kiln/dev.env must not be used by these runs.
    stateDir = mkdtempSync(join(tmpdir(), 'kiln-cli-state-'));
    writeFileSync(join(workDir, 'app.sh'), '#!/bin/sh\necho "app says $GREETING"\n', { mode: 0o755 });
  });

  afterEach(async () => {
    await api?.stop();
    api = undefined;
    rmSync(workDir, { recursive: true, force: true });
    rmSync(stateDir, { recursive: true, force: true });
  });

  async function startApi(script: BuildScript): Promise<ScriptedTemplateApi> {
    api = new ScriptedTemplateApi(script);
    await api.start();
    return api;
  }

  const envFor = (stand: ScriptedTemplateApi) => ({ E2B_API_KEY: stand.apiKey, E2B_API_URL: stand.url, KILN_STATE: stateDir });

  it('builds a Dockerfile: translates every instruction into E2B steps, uploads the COPY source, and exits 0 naming the build', async () => {
    const stand = await startApi(READY_SCRIPT);
    writeFileSync(join(workDir, 'Dockerfile'), DOCKERFILE);

    const run = await runKiln(
      ['template', 'build', '-f', 'Dockerfile', '-n', 'acceptance-app', '--cpu', '1', '--memory', '512', '--tag', 'v1', '--skip-cache', '--ready-cmd', 'curl -sf localhost:8000'],
      { cwd: workDir, env: envFor(stand) },
    );

    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(stand.callsTo('POST', /^\/v3\/templates$/).map((call) => call.body)).toEqual([{ name: 'acceptance-app', tags: ['v1'], cpuCount: 1, memoryMB: 512 }]);

    const [start] = stand.callsTo('POST', /^\/v2\/templates\/.+\/builds\/.+$/);
    const definition = start.body as { steps: Array<{ type: string; args: string[]; filesHash?: string; force: boolean }> } & Record<string, unknown>;
    expect(definition).toMatchObject({ fromTemplate: 'base', force: true, startCmd: 'python3 -m http.server 8000', readyCmd: 'curl -sf localhost:8000' });
    expect(definition.fromImage).toBeUndefined();
    expect(definition.steps.map(({ type, args }) => [type, args])).toEqual([
      ['RUN', ["export GREETING=hi; apt-get install -y jq"]],
      ['ENV', ['GREETING', 'hi']],
      ['COPY', ['app.sh', '/srv/', 'user', '']],
      ['WORKDIR', ['/srv']],
      ['USER', ['user']],
    ]);

    // The COPY's files were asked for by their hash and uploaded to the signed URL, without the API key.
    const filesHash = definition.steps[2].filesHash!;
    expect(filesHash).toMatch(/^[0-9a-f]{64}$/);
    expect(stand.callsTo('GET', new RegExp(`/files/${filesHash}$`))).toHaveLength(1);
    const [upload] = stand.callsTo('PUT', /^\/upload\//);
    expect(upload.apiKey).toBeUndefined();
    expect(stand.uploads.get(filesHash)).toContain('app.sh');

    // Plain output (stdout is not a terminal): the streamed log, the step summary and the result.
    expect(run.stdout).toContain('Building acceptance-app: 7 steps (0..6)');
    expect(run.stdout).toMatch(/\d+\.\ds CACHED \[1\/5\] RUN apt-get install -y jq/);
    expect(run.stdout).toContain('✓ [1/6] RUN apt-get install -y jq (Dockerfile:4)  CACHED');
    expect(run.stdout).toMatch(/✓ \[6\/6\] finalize \(start: python3 -m http\.server 8000; ready: curl -sf localhost:8000\): snapshot \(Dockerfile:9\)/);
    expect(run.stdout).toContain(`Built acceptance-app (template ${stand.templateId}, build ${stand.buildId} tags default, v1) in`);
    expect(run.stdout).not.toContain('\x1b[');
    // The bundle of nothing and no temp files left next to the Dockerfile.
    expect(readdirSync(workDir).sort()).toEqual(['Dockerfile', 'app.sh']);
  });

  it('maps FROM of an image reference to fromImage and takes --build-arg', async () => {
    const stand = await startApi({ logs: [], outcome: { status: 'ready' } });
    writeFileSync(join(workDir, 'Dockerfile.debian'), ['ARG SUITE=bookworm', 'FROM debian:${SUITE}', 'RUN echo hi'].join('\n'));

    const run = await runKiln(['template', 'build', '-f', 'Dockerfile.debian', '-n', 'deb', '--build-arg', 'SUITE=trixie'], { cwd: workDir, env: envFor(stand) });

    expect(run.code).toBe(0);
    const [start] = stand.callsTo('POST', /\/builds\//);
    expect(start.body).toMatchObject({ fromImage: 'debian:trixie', force: false, steps: [{ type: 'RUN', args: ['echo hi'] }] });
    expect((start.body as Record<string, unknown>).fromTemplate).toBeUndefined();
    expect((start.body as Record<string, unknown>).startCmd).toBeUndefined();
  });

  it('exits 1 naming the failing step and its instruction when the build ends in error', async () => {
    const stand = await startApi({
      logs: [
        { level: 'info', message: '[base] template base (build 1)', step: '0' },
        { level: 'info', message: '[1/3] RUN echo before done in 0.4 s', step: '1' },
        { level: 'info', message: '[2/3] RUN false', step: '2' },
        { level: 'error', message: 'command exited with code 1', step: '2' },
      ],
      outcome: { status: 'error', message: 'RUN false: command exited with code 1', step: '2' },
    });
    writeFileSync(join(workDir, 'Dockerfile'), ['FROM base', 'RUN echo before', 'RUN false', 'USER user'].join('\n'));

    const run = await runKiln(['template', 'build', '-f', 'Dockerfile', '-n', 'broken'], { cwd: workDir, env: envFor(stand) });

    expect(run.code).toBe(1);
    expect(run.stderr).toBe('kiln: build of broken failed at step 2: RUN false (Dockerfile:3)\n  RUN false: command exited with code 1\n');
    expect(run.stdout).toMatch(/\d+\.\ds ERROR command exited with code 1/);
    expect(run.stdout).toContain('✗ [2/4] RUN false (Dockerfile:3)  FAILED');
  });

  it('refuses an unsupported instruction with its line before making any request', async () => {
    const stand = await startApi(READY_SCRIPT);
    writeFileSync(join(workDir, 'Dockerfile'), ['FROM base', 'RUN true', 'EXPOSE 8000'].join('\n'));

    const run = await runKiln(['template', 'build', '-f', 'Dockerfile', '-n', 'x'], { cwd: workDir, env: envFor(stand) });

    expect(run.code).toBe(2);
    expect(run.stderr).toBe(
      'Dockerfile:3: instruction EXPOSE is not supported by Kiln (supported: FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, CMD, ENTRYPOINT)\n',
    );
    expect(run.stdout).toBe('');
    expect(stand.calls).toEqual([]);
  });

  it('refuses a COPY source missing from the context before making any request', async () => {
    const stand = await startApi(READY_SCRIPT);
    writeFileSync(join(workDir, 'Dockerfile'), ['FROM base', 'COPY missing.sh /srv/'].join('\n'));

    const run = await runKiln(['template', 'build', '-f', 'Dockerfile', '-n', 'x'], { cwd: workDir, env: envFor(stand) });

    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/^Dockerfile:2: COPY source missing\.sh does not exist in the build context/);
    expect(stand.calls).toEqual([]);
  });

  it('builds a TypeScript template file through the SDK, with its directory as the context', async () => {
    const stand = await startApi({ logs: [{ level: 'info', message: '[1/4] RUN apt-get install -y jq root' }], outcome: { status: 'ready' } });
    writeFileSync(
      join(workDir, 'template.ts'),
      [
        "import { Template, waitForPort } from 'e2b';",
        'const greeting: string = "hi";',
        'export default Template()',
        "  .fromTemplate('base')",
        "  .runCmd('apt-get install -y jq', { user: 'root' })",
        '  .setEnvs({ GREETING: greeting })',
        "  .copy('app.sh', '/srv/')",
        "  .setWorkdir('/srv')",
        "  .setStartCmd('python3 -m http.server 8000', waitForPort(8000));",
      ].join('\n'),
    );

    const run = await runKiln(['template', 'build', '-f', 'template.ts', '-n', 'from-ts', '--plain'], { cwd: workDir, env: envFor(stand) });

    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const [start] = stand.callsTo('POST', /\/builds\//);
    const definition = start.body as { steps: Array<{ type: string; args: string[]; filesHash?: string }> } & Record<string, unknown>;
    expect(definition).toMatchObject({ fromTemplate: 'base', startCmd: 'python3 -m http.server 8000' });
    expect(definition.readyCmd).toEqual(expect.stringContaining('8000'));
    expect(definition.steps.map(({ type, args }) => [type, args])).toEqual([
      ['RUN', ['apt-get install -y jq', 'root']],
      ['ENV', ['GREETING', 'hi']],
      ['COPY', ['app.sh', '/srv/', '', '']],
      ['WORKDIR', ['/srv']],
    ]);
    expect(stand.uploads.get(definition.steps[2].filesHash!)).toContain('app.sh');
    expect(run.stdout).toContain('✓ [1/5] RUN apt-get install -y jq (as root)');
    expect(run.stdout).toContain(`Built from-ts (template ${stand.templateId}`);
    // The compiled bundle next to the template file is gone.
    expect(readdirSync(workDir).sort()).toEqual(['app.sh', 'template.ts']);
  });

  it('exits 2 for a template file without a Template export, and 1 when the API rejects the key', async () => {
    const stand = await startApi(READY_SCRIPT);
    writeFileSync(join(workDir, 'empty.mjs'), 'export const nothing = 1;\n');
    const empty = await runKiln(['template', 'build', '-f', 'empty.mjs', '-n', 'x'], { cwd: workDir, env: envFor(stand) });
    expect(empty.code).toBe(2);
    expect(empty.stderr).toMatch(/^kiln: empty\.mjs does not export a Template/);

    writeFileSync(join(workDir, 'Dockerfile'), 'FROM base\nRUN true\n');
    const denied = await runKiln(['template', 'build', '-f', 'Dockerfile', '-n', 'x'], { cwd: workDir, env: { ...envFor(stand), E2B_API_KEY: 'e2b_wrong' } });
    expect(denied.code).toBe(1);
    expect(denied.stderr).toMatch(/^kiln: build of x failed: .*Invalid API key/);
  });

  it('reads the connection from $KILN_STATE/dev.env when the environment has none', async () => {
    const stand = await startApi({ logs: [], outcome: { status: 'ready' } });
    writeFileSync(join(stateDir, 'dev.env'), `E2B_API_URL=${stand.url}\nE2B_API_KEY=${stand.apiKey}\nE2B_DOMAIN=kiln.localhost\n`);
    writeFileSync(join(workDir, 'Dockerfile'), 'FROM base\nRUN true\n');

    const run = await runKiln(['template', 'build', '-f', 'Dockerfile', '-n', 'dev-env'], { cwd: workDir, env: { KILN_STATE: stateDir } });

    expect(run.code).toBe(0);
    expect(stand.calls.filter((call) => call.apiKey === stand.apiKey).length).toBeGreaterThan(0);
  });

  it('prints help and exits 0, and a usage error exits 2', async () => {
    const help = await runKiln(['template', 'build', '--help'], { cwd: workDir, env: {} });
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Usage: kiln template build -f FILE -n NAME [options]');
    const bad = await runKiln(['template', 'build', '-f', 'Dockerfile'], { cwd: workDir, env: {} });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe("kiln: -n/--name is required (the template name, optionally name:tag)\nSee 'kiln template build --help'.\n");
    expect(existsSync(KILN_BIN)).toBe(true);
  });
});
