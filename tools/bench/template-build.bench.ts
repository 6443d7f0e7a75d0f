/**
 * Template builds (issue 14), end to end through the official e2b SDK against a running stack (`npm run up`):
 * - the cold build of the acceptance definition (every step rebuilt: `skipCache`) against the cached rebuild of the
 *   same definition, in the same run, as p50/p95 and their ratio;
 * - the fetch of the built template by a host that lacks it (TemplateFetcher: copy from the artifact store, sha256
 *   of every file checked) against a plain copy of the same files (no hashing), in the same run.
 *
 * Run as root with the stack up:
 *   node tools/bench/run-bench.mjs tools/bench/template-build.bench.ts
 * Env: BENCH_COLD (cold builds, default 2), BENCH_CACHED (cached rebuilds, default 5), BENCH_FETCHES (default 5),
 * KILN_STATE (where dev.env is, default .kiln), KILN_ARTIFACT_DIR (default /var/lib/kiln/artifacts).
 * Leaves the template `bench-template-build` on the stack; removes its scratch dirs.
 */
import 'reflect-metadata';
import { Logger } from '@nestjs/common';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { LocalArtifactStore } from '@kiln/artifacts';
import { Template, waitForPort } from 'e2b';
import { TemplateFetcher, templateArtifactPrefix } from '../../apps/host-agent/src/template/template-fetcher';
import { percentile, report } from './support/sample-stats';

const COLD = Number(process.env.BENCH_COLD ?? 2);
const CACHED = Number(process.env.BENCH_CACHED ?? 5);
const FETCHES = Number(process.env.BENCH_FETCHES ?? 5);
const NAME = 'bench-template-build';
const ARTIFACT_DIR = process.env.KILN_ARTIFACT_DIR ?? '/var/lib/kiln/artifacts';

async function connection(): Promise<{ apiKey: string; apiUrl: string; domain: string }> {
  const file = join(process.env.KILN_STATE ?? join(process.cwd(), '.kiln'), 'dev.env');
  const text = await readFile(file, 'utf8');
  const value = (key: string) => new RegExp(`^${key}=(\\S+)$`, 'm').exec(text)?.[1] ?? '';
  return { apiKey: value('E2B_API_KEY'), apiUrl: value('E2B_API_URL'), domain: value('E2B_DOMAIN') };
}

function definition(context: string) {
  return Template({ fileContextPath: context })
    .fromTemplate('base')
    .runCmd('apt-get install -y jq', { user: 'root' })
    .setEnvs({ GREETING: 'hi' })
    .copy('app.sh', '/srv/')
    .setWorkdir('/srv')
    .setUser('user')
    .setStartCmd('python3 -m http.server 8000', waitForPort(8000));
}

async function main(): Promise<void> {
  // The fetcher logs each fetch; the figures are what this prints.
  Logger.overrideLogger(['error', 'warn']);
  const opts = await connection();
  const context = await mkdtemp(join(tmpdir(), 'kiln-bench-template-'));
  const scratch = await mkdtemp(join(tmpdir(), 'kiln-bench-fetch-'));
  try {
    await writeFile(join(context, 'app.sh'), '#!/bin/sh\necho "app says $GREETING"\n', { mode: 0o755 });
    const timeBuild = async (skipCache: boolean): Promise<{ ms: number; templateId: string; buildId: string }> => {
      const started = performance.now();
      const info = await Template.build(definition(context), NAME, { ...opts, cpuCount: 1, memoryMB: 512, skipCache });
      return { ms: performance.now() - started, templateId: info.templateId, buildId: info.buildId };
    };
    const cold: number[] = [];
    const cached: number[] = [];
    let last = { templateId: '', buildId: '' };
    for (let i = 0; i < COLD; i++) {
      const result = await timeBuild(true);
      cold.push(result.ms);
      last = result;
    }
    // Forced builds leave layers of their own (keyed by their build): the first unforced build fills the plain cache.
    const first = await timeBuild(false);
    for (let i = 0; i < CACHED; i++) {
      const result = await timeBuild(false);
      cached.push(result.ms);
      last = result;
    }
    report('cold build (skipCache, every step rebuilt) [baseline]', cold);
    console.log('first unforced build (fills the layer cache)'.padEnd(60), `${first.ms.toFixed(1)} ms`);
    report('cached rebuild (unchanged definition)', cached);
    console.log(`cached / cold (p50)`.padEnd(60), (percentile(cached, 50) / percentile(cold, 50)).toFixed(3));

    // A host that lacks the template: a data dir of its own, the stack's artifact store.
    const store = new LocalArtifactStore(ARTIFACT_DIR);
    const prefix = templateArtifactPrefix(last.templateId, last.buildId);
    const keys = await store.list(prefix);
    if (!keys.length) throw new Error(`the artifact store at ${ARTIFACT_DIR} holds nothing under ${prefix}`);
    let bytes = 0;
    for (const key of keys) bytes += (await store.stat(key))?.bytes ?? 0;
    const fetches: number[] = [];
    const copies: number[] = [];
    for (let i = 0; i < FETCHES; i++) {
      const copyDir = join(scratch, `copy-${i}`);
      await mkdir(copyDir, { recursive: true });
      let started = performance.now();
      for (const key of keys) await copyFile(store.pathOf(key), join(copyDir, key.slice(prefix.length)));
      copies.push(performance.now() - started);
      await rm(copyDir, { recursive: true, force: true });

      const templatesRoot = join(scratch, `host-${i}`, 'templates');
      await mkdir(templatesRoot, { recursive: true });
      started = performance.now();
      const fetched = await new TemplateFetcher(templatesRoot, store).fetch(last.templateId, last.buildId);
      fetches.push(performance.now() - started);
      if (!fetched || !(await readdir(join(templatesRoot, last.templateId, last.buildId))).includes('template.json')) {
        throw new Error('the fetch did not bring the template');
      }
      await rm(join(scratch, `host-${i}`), { recursive: true, force: true });
    }
    console.log(`template ${last.templateId}/${last.buildId}: ${keys.length} files, ${(bytes / 1024 / 1024).toFixed(1)} MiB`);
    report('plain copy of the template files [baseline]', copies);
    report('fetch + sha256 verify (TemplateFetcher)', fetches);
    console.log(`fetch / copy (p50)`.padEnd(60), (percentile(fetches, 50) / percentile(copies, 50)).toFixed(3));
  } finally {
    await rm(context, { recursive: true, force: true });
    await rm(scratch, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
