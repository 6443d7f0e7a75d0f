// Compiles tools/bench/guest-agent.bench.ts with esbuild (reading libs' TypeScript source) and runs it.
// Usage: npx nx run guest-agent:bundle && node tools/bench/guest-agent-bench.mjs
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const outDir = mkdtempSync(join(tmpdir(), 'kiln-ga-bench-build-'));
try {
  const outfile = join(outDir, 'guest-agent.bench.js');
  await build({
    entryPoints: [join(here, 'guest-agent.bench.ts')],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    conditions: ['development'],
    logLevel: 'warning',
  });
  const run = spawnSync(process.execPath, [outfile], { stdio: 'inherit', env: { ...process.env, BENCH_SOURCE_DIR: here } });
  process.exitCode = run.status ?? 1;
} finally {
  rmSync(outDir, { recursive: true, force: true });
}
