#!/usr/bin/env node
// Runs the official E2B JS SDK's own vitest suite against a running Kiln stack, one test file at a time, in the two
// ways E2B users configure the SDK: explicit URLs (E2B_API_URL + E2B_SANDBOX_URL) and the domain alone (E2B_DOMAIN).
// Prints a per-file table, compares failures with tools/conformance/expected-failures.json (each listed with the open
// issue or the machine limit that explains it) and exits non-zero on a failure that is not listed there.
//
// The SDK is never copied into this repository: point --sdk at a checkout of e2b-dev/E2B's packages/js-sdk whose
// dependencies are installed (see tools/conformance/README.md).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '../..');

const USAGE = `usage: node tools/conformance/run-sdk-tests.mjs --sdk <path to E2B packages/js-sdk>
  [--mode url|domain|both]   which SDK configuration(s) to run (default both)
  [--env-file <path>]        stack credentials (default .kiln/dev.env)
  [--only <substring>]       run only test files whose path contains it (repeatable)
  [--all]                    also run offline files (mocked with msw or not touching a sandbox)
  [--file-timeout <seconds>] per file (default 900)
  [--json <path>]            write the full results
  [--markdown <path>]        write the per-file table as Markdown`;

function parseArgs(argv) {
  const args = { mode: 'both', envFile: join(REPO, '.kiln/dev.env'), only: [], all: false, fileTimeoutS: 900 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--sdk': args.sdk = resolve(value()); break;
      case '--mode': args.mode = value(); break;
      case '--env-file': args.envFile = resolve(value()); break;
      case '--only': args.only.push(value()); break;
      case '--all': args.all = true; break;
      case '--file-timeout': args.fileTimeoutS = Number(value()); break;
      case '--json': args.json = resolve(value()); break;
      case '--markdown': args.markdown = resolve(value()); break;
      case '-h': case '--help': console.log(USAGE); process.exit(0); break;
      default: throw new Error(`unknown argument ${flag}\n${USAGE}`);
    }
  }
  if (!args.sdk) throw new Error(`--sdk is required\n${USAGE}`);
  if (!['url', 'domain', 'both'].includes(args.mode)) throw new Error('--mode must be url, domain or both');
  if (!(args.fileTimeoutS > 0)) throw new Error('--file-timeout must be a positive number of seconds');
  if (!existsSync(join(args.sdk, 'vitest.config.mts'))) throw new Error(`${args.sdk} is not the SDK's packages/js-sdk`);
  if (!existsSync(join(args.sdk, 'node_modules/.bin/vitest'))) {
    throw new Error(`${args.sdk}: dependencies are not installed (npm install --legacy-peer-deps --ignore-scripts)`);
  }
  return args;
}

function readEnvFile(path) {
  const env = {};
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (m) env[m[1]] = m[2].replace(/^(['"])(.*)\1$/, '$2');
  }
  return env;
}

/** The SDK's environment for one mode; everything E2B-related from the caller's own environment is dropped first. */
function modeEnv(mode, stack) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('E2B_')));
  const need = (name) => {
    if (!stack[name]) throw new Error(`${name} is missing from the env file (mode ${mode})`);
    return stack[name];
  };
  env.E2B_API_KEY = need('E2B_API_KEY');
  // Kiln keys are checked by the API; the SDK's client-side format check would only duplicate it.
  env.E2B_VALIDATE_API_KEY = 'false';
  if (mode === 'url') {
    env.E2B_API_URL = need('E2B_API_URL');
    env.E2B_SANDBOX_URL = need('E2B_SANDBOX_URL');
    // Some files build URLs from the domain themselves (msw mocks); give them the stack's.
    if (stack.E2B_DOMAIN) env.E2B_DOMAIN = stack.E2B_DOMAIN;
  } else {
    env.E2B_DOMAIN = need('E2B_DOMAIN');
    if (stack.NODE_EXTRA_CA_CERTS) env.NODE_EXTRA_CA_CERTS = stack.NODE_EXTRA_CA_CERTS;
  }
  return env;
}

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...walk(path));
    else if (/\.test\.tsx?$/.test(name)) out.push(path);
  }
  return out;
}

// A file is live when it drives a real sandbox or template build; files whose every call is answered by msw mocks,
// and pure unit tests, run offline. Mixed files count as live.
const LIVE_PATTERN = /sandboxTest|buildTemplateTest|volumeTest|Sandbox\.(create|connect|list|kill|betaCreate)|Template\.build/;

function testFiles(sdk, args) {
  return walk(join(sdk, 'tests'))
    .map((path) => relative(sdk, path))
    // Browser and Cloudflare runtimes need a browser or wrangler deployment; connectionConfig is its own offline project.
    .filter((file) => !file.startsWith('tests/runtimes/') && file !== 'tests/connectionConfig.test.ts')
    .filter((file) => args.only.length === 0 || args.only.some((s) => file.includes(s)))
    .map((file) => ({
      file,
      project: file.startsWith('tests/template/') ? 'template' : 'unit',
      live: LIVE_PATTERN.test(readFileSync(join(sdk, file), 'utf8')),
    }))
    .filter((t) => args.all || t.live)
    .sort((a, b) => a.file.localeCompare(b.file));
}

function runFile(sdk, test, env, timeoutS, scratch) {
  const report = join(scratch, 'report.json');
  rmSync(report, { force: true });
  const started = Date.now();
  return new Promise((resolvePromise) => {
    const child = spawn(
      join(sdk, 'node_modules/.bin/vitest'),
      ['run', '--project', test.project, test.file, '--no-file-parallelism', '--maxWorkers=1',
        '--reporter=json', `--outputFile=${report}`],
      { cwd: sdk, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true },
    );
    let output = '';
    const keep = (chunk) => {
      output = (output + chunk.toString()).slice(-20000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try { process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ }
    }, timeoutS * 1000);
    child.on('close', (code) => {
      clearTimeout(timer);
      const seconds = (Date.now() - started) / 1000;
      let tests = [];
      if (existsSync(report)) {
        const parsed = JSON.parse(readFileSync(report, 'utf8'));
        tests = parsed.testResults.flatMap((r) =>
          r.assertionResults.map((a) => ({
            name: a.fullName.trim(),
            status: a.status,
            message: (a.failureMessages ?? []).join('\n').split('\n').slice(0, 3).join(' ').slice(0, 300),
          })),
        );
      }
      resolvePromise({ ...test, exitCode: code, timedOut, seconds, tests, output: tests.length ? '' : output });
    });
  });
}

/**
 * The expected failure covering one test: an entry names a file (or a folder, ending in '/') and optionally one test
 * and the modes it applies to. The most specific entry wins.
 */
function loadExpected() {
  const path = join(HERE, 'expected-failures.json');
  const list = JSON.parse(readFileSync(path, 'utf8')).expected;
  const covers = (e, mode, file, test) =>
    (e.modes ?? ['url', 'domain']).includes(mode) &&
    (e.file.endsWith('/') ? file.startsWith(e.file) : file === e.file) &&
    (e.test === undefined || e.test === test);
  const specificity = (e) => (e.test !== undefined ? 4 : 0) + (e.file.endsWith('/') ? 0 : 2) + (e.modes ? 1 : 0);
  return (mode, file, test) =>
    list.filter((e) => covers(e, mode, file, test)).sort((a, b) => specificity(b) - specificity(a))[0];
}

function pad(text, width) {
  return String(text).padEnd(width);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const stack = readEnvFile(args.envFile);
  const expectedFor = loadExpected();
  const modes = args.mode === 'both' ? ['url', 'domain'] : [args.mode];
  const files = testFiles(args.sdk, args);
  const scratch = mkdtempSync(join(tmpdir(), 'kiln-conformance-'));
  const sdkVersion = JSON.parse(readFileSync(join(args.sdk, 'package.json'), 'utf8')).version;
  console.log(`e2b SDK ${sdkVersion} at ${args.sdk}: ${files.length} files, modes ${modes.join(', ')}`);

  const results = [];
  for (const mode of modes) {
    const env = modeEnv(mode, stack);
    for (const test of files) {
      const result = await runFile(args.sdk, test, env, args.fileTimeoutS, scratch);
      result.mode = mode;
      for (const t of result.tests) {
        const expected = expectedFor(mode, test.file, t.name);
        if (t.status === 'failed') t.expected = expected ? expected.reason : undefined;
        // An entry naming this very test is stale once it passes: the list should only shrink.
        else if (t.status === 'passed' && expected?.test === t.name) t.staleExpectation = true;
      }
      const count = (s) => result.tests.filter((t) => t.status === s).length;
      result.passed = count('passed');
      result.failed = count('failed');
      result.skipped = result.tests.length - result.passed - result.failed;
      result.unexpected = result.tests.filter((t) => t.status === 'failed' && !t.expected).length;
      // A file that ran no test at all (crash, timeout, collection error) is a failure of the file itself.
      if (result.tests.length === 0 && !expectedFor(mode, test.file, undefined)) result.unexpected += 1;
      results.push(result);
      const flag = result.unexpected > 0 ? 'FAIL' : result.failed > 0 ? 'ok*' : 'ok';
      console.log(
        `${pad(flag, 5)}${pad(mode, 7)}${pad(test.file, 52)}${pad(`${result.passed}/${result.tests.length}`, 8)}` +
          `${result.timedOut ? 'timed out ' : ''}${result.seconds.toFixed(1)}s`,
      );
      for (const t of result.tests.filter((x) => x.status === 'failed')) {
        console.log(`       ${t.expected ? 'expected' : 'UNEXPECTED'}: ${t.name}${t.expected ? ` (${t.expected})` : `: ${t.message}`}`);
      }
      for (const t of result.tests.filter((x) => x.staleExpectation)) {
        console.log(`       now passes, remove it from expected-failures.json: ${t.name}`);
      }
      if (result.tests.length === 0) console.log(`       no test ran: ${result.output.split('\n').slice(-8).join(' | ')}`);
    }
  }
  rmSync(scratch, { recursive: true, force: true });

  const summary = {};
  for (const mode of modes) {
    const mine = results.filter((r) => r.mode === mode);
    const sum = (k) => mine.reduce((n, r) => n + r[k], 0);
    summary[mode] = {
      files: mine.length,
      tests: mine.reduce((n, r) => n + r.tests.length, 0),
      passed: sum('passed'),
      failed: sum('failed'),
      skipped: sum('skipped'),
      unexpected: sum('unexpected'),
      seconds: Math.round(sum('seconds')),
    };
    const s = summary[mode];
    console.log(
      `${mode}: ${s.passed}/${s.tests} passed, ${s.failed} failed (${s.unexpected} unexpected), ${s.skipped} skipped, ` +
        `${s.files} files, ${s.seconds}s`,
    );
  }
  if (args.json) writeFileSync(args.json, JSON.stringify({ sdkVersion, modes, summary, results }, null, 2));
  if (args.markdown) writeFileSync(args.markdown, markdownTable(results, modes));
  process.exitCode = Object.values(summary).some((s) => s.unexpected > 0) ? 1 : 0;
}

function markdownTable(results, modes) {
  const files = [...new Set(results.map((r) => r.file))];
  const header = `| file | ${modes.map((m) => `${m} mode`).join(' | ')} |\n|---|${modes.map(() => '---').join('|')}|\n`;
  const cell = (r) => {
    if (!r) return '';
    if (r.tests.length === 0) return r.timedOut ? 'timed out' : 'no test ran';
    const expected = r.failed - r.tests.filter((t) => t.status === 'failed' && !t.expected).length;
    let text = `${r.passed}/${r.tests.length}`;
    if (r.unexpected) text += ` (**${r.unexpected} unexpected**)`;
    else if (expected) text += ` (${expected} excepted)`;
    return text;
  };
  const rows = files.map((f) => `| ${f} | ${modes.map((m) => cell(results.find((r) => r.file === f && r.mode === m))).join(' | ')} |`);
  return header + rows.join('\n') + '\n';
}

main().catch((err) => {
  console.error(err.message ?? err);
  process.exit(2);
});
