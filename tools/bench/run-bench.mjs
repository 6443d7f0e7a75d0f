// Compiles one TypeScript benchmark or soak with esbuild (reading libs' and apps' TypeScript source) and runs it.
// Usage: node tools/bench/run-bench.mjs tools/bench/<name>.bench.ts | tools/soak/<name>.soak.ts
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

const entry = process.argv[2];
if (!entry || !['.bench.ts', '.soak.ts'].some((suffix) => entry.endsWith(suffix))) {
  console.error('usage: node tools/bench/run-bench.mjs <path/to/name.bench.ts | path/to/name.soak.ts>');
  process.exit(2);
}
const outDir = mkdtempSync(join(tmpdir(), 'kiln-bench-build-'));
try {
  const outfile = join(outDir, basename(entry).replace(/\.ts$/, '.js'));
  await build({
    entryPoints: [resolve(entry)],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    conditions: ['development'],
    // Nest and friends load optional peers dynamically; resolve them from node_modules at run time instead.
    packages: 'external',
    logLevel: 'warning',
  });
  // The bundle lives in a temp dir, so external packages are found through NODE_PATH.
  const env = { ...process.env, NODE_PATH: join(repoRoot, 'node_modules') };
  const run = spawnSync(process.execPath, [outfile], { stdio: 'inherit', env });
  process.exitCode = run.status ?? 1;
} finally {
  rmSync(outDir, { recursive: true, force: true });
}
