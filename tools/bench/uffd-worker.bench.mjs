// UFFD worker benchmark: faults/s and p50/p99 fault latency as the touching threads see them (the harness plays
// Firecracker: a real userfaultfd served by the real kiln-uffd-worker), against a plain pread() of the same pages from
// the same page-cached file in the same run. Builds the worker and harness first when they are missing or stale (make).
// Usage: node tools/bench/uffd-worker.bench.mjs [--pages N] [--threads T]   (defaults: 65536 pages = 256 MiB, 8 threads)
// Results: docs/bench/uffd-worker.md
import { execFileSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const workerDir = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'apps', 'host-agent', 'uffd-worker');
execFileSync('make', ['-s', '-C', workerDir, 'all'], { stdio: ['ignore', 'ignore', 'inherit'] });

const passThrough = process.argv.slice(2);
const line = execFileSync(
  join(workerDir, 'build', 'uffd-harness'),
  ['--worker', join(workerDir, 'build', 'kiln-uffd-worker'), '--bench', ...passThrough],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 300_000 },
).trim();
const result = JSON.parse(line);
const { uffd, pread } = result;

const fmt = (n) => n.toFixed(2).padStart(9);
console.log(`uffd worker bench: ${result.pages} pages (${(result.pages * 4096) / 2 ** 20} MiB), ${result.threads} touching threads`);
console.log(`                     ops/s        p50 us    p99 us`);
console.log(`  uffd fault     ${String(Math.round(uffd.faults_per_s)).padStart(10)} ${fmt(uffd.p50_us)} ${fmt(uffd.p99_us)}`);
console.log(`  pread 4 KiB    ${String(Math.round(pread.reads_per_s)).padStart(10)} ${fmt(pread.p50_us)} ${fmt(pread.p99_us)}`);
console.log(
  `  ratio uffd/pread: throughput ${(uffd.faults_per_s / pread.reads_per_s).toFixed(2)}x, ` +
    `p50 ${(uffd.p50_us / pread.p50_us).toFixed(1)}x, p99 ${(uffd.p99_us / pread.p99_us).toFixed(1)}x`,
);
console.log(`  worker: ${uffd.worker_faults} faults served, mean ${uffd.worker_mean_us.toFixed(2)} us from event read to UFFDIO_COPY/ZEROPAGE done`);
console.log(JSON.stringify(result));
