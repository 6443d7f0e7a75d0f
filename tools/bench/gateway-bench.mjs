// Runs a gateway benchmark straight from TypeScript source. Nest's dependency injection
// needs decorator metadata, which esbuild (run-bench.mjs) does not emit, so the sources
// are compiled on load with swc (the same settings as the Jest preset) and workspace
// libs are resolved through their "development" export condition.
// Usage: node tools/bench/gateway-bench.mjs tools/bench/gateway-<name>.bench.ts
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const entry = process.argv[2];
if (!entry || !/gateway-[\w-]+\.bench\.ts$/.test(entry)) {
  console.error('usage: node tools/bench/gateway-bench.mjs tools/bench/gateway-<name>.bench.ts');
  process.exit(2);
}
const run = spawnSync(
  process.execPath,
  ['--conditions=development', '--require', join(here, 'gateway-ts-register.cjs'), resolve(entry)],
  { stdio: 'inherit', env: process.env },
);
process.exitCode = run.status ?? 1;
