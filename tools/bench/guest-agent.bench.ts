/**
 * Guest-agent benchmark: Start → first stdout byte over Connect, against child_process.spawn of the same command in
 * the same run, and /files upload/download throughput against plain local disk streaming of the same bytes.
 *
 * Run (after building the bundle):  npx nx run guest-agent:bundle && node tools/bench/guest-agent-bench.mjs
 * Options via env: BENCH_ITERATIONS (default 200), BENCH_FILE_MIB (default 256).
 */
import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Process } from '@kiln/proto/process';

const BUNDLE = join(__dirname_of(), '..', '..', 'apps', 'guest-agent', 'dist', 'bundle', 'guest-agent.js');
const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 200);
const WARMUP = 20;
const FILE_MIB = Number(process.env.BENCH_FILE_MIB ?? 256);
const MiB = 1024 * 1024;

function __dirname_of(): string {
  return process.env.BENCH_SOURCE_DIR ?? __dirname;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function summary(label: string, samples: number[]): string {
  const sorted = [...samples].sort((a, b) => a - b);
  return `${label.padEnd(52)} p50 ${percentile(sorted, 50).toFixed(2).padStart(8)} ms   p95 ${percentile(sorted, 95).toFixed(2).padStart(8)} ms   (n=${samples.length})`;
}

async function startAgent(): Promise<{ port: number; stop: () => void }> {
  const child = spawn(process.execPath, [BUNDLE, '--port', '0', '--host', '127.0.0.1', '--guest-duties', 'off'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on .*:(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`agent exited (${code}); did you run the bundle target?`)));
  });
  return { port, stop: () => child.kill('SIGTERM') };
}

/** Process start until the agent prints its listening line (it accepts connections from then on). */
async function agentStartupMs(): Promise<number> {
  const t0 = performance.now();
  const { stop } = await startAgent();
  const ms = performance.now() - t0;
  stop();
  return ms;
}

/** Baseline: the same node binary starting and printing a line. */
async function nodeStartupMs(): Promise<number> {
  return spawnFirstByteMs(process.execPath, ['-e', 'console.log("up")']);
}

async function spawnFirstByteMs(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] });
    let first: number | undefined;
    child.stdout.once('data', () => (first = performance.now() - t0));
    child.stdout.resume();
    child.once('error', reject);
    child.once('close', () => (first === undefined ? reject(new Error('no output')) : resolve(first)));
  });
}

async function agentFirstByteMs(client: ReturnType<typeof createClient<typeof Process>>, cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  let first: number | undefined;
  for await (const message of client.start({ process: { cmd, args, envs: {} } })) {
    const event = message.event?.event;
    if (first === undefined && event?.case === 'data') first = performance.now() - t0;
  }
  if (first === undefined) throw new Error('no output');
  return first;
}

function patterned(mib: number): Readable {
  const base = Buffer.alloc(MiB, 0x5a);
  let i = 0;
  return new Readable({
    read() {
      if (i === mib) return void this.push(null);
      const chunk = Buffer.from(base);
      chunk.writeUInt32BE(i++, 0);
      this.push(chunk);
    },
  });
}

function httpUpload(port: number, path: string, body: Readable): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, method: 'POST', path: `/files?path=${encodeURIComponent(path)}&username=root`, headers: { 'content-type': 'application/octet-stream' } },
      (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`upload ${res.statusCode}`))));
      },
    );
    req.on('error', reject);
    body.pipe(req);
  });
}

function httpDownload(port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path: `/files?path=${encodeURIComponent(path)}&username=root` }, (res) => {
      let bytes = 0;
      res.on('data', (d: Buffer) => (bytes += d.length));
      res.on('end', () => resolve(bytes));
      res.on('error', reject);
    })
      .on('error', reject)
      .end();
  });
}

const sink = () => new Writable({ write: (_c, _e, cb) => cb() });

async function main(): Promise<void> {
  const agent = await startAgent();
  // Commands run as root through the agent, the same user as the spawn baseline, so login-shell startup is comparable.
  const asRoot = `Basic ${Buffer.from('root:').toString('base64')}`;
  const client = createClient(
    Process,
    createConnectTransport({
      baseUrl: `http://127.0.0.1:${agent.port}`,
      httpVersion: '1.1',
      interceptors: [(next) => (req) => (req.header.set('authorization', asRoot), next(req))],
    }),
  );
  const scratch = await mkdtemp(join(tmpdir(), 'kiln-ga-bench-'));
  try {
    console.log(`guest-agent bench: ${ITERATIONS} iterations (+${WARMUP} warm-up), file ${FILE_MIB} MiB, node ${process.version}`);
    const startup: number[] = [];
    const nodeBaseline: number[] = [];
    for (let i = 0; i < 5 + 30; i++) {
      const a = await agentStartupMs();
      const b = await nodeStartupMs();
      if (i >= 5) {
        startup.push(a);
        nodeBaseline.push(b);
      }
    }
    console.log(summary('agent start → listening', startup));
    console.log(summary('baseline: node -e console.log', nodeBaseline));

    const cases: Array<[string, string, string[]]> = [
      ['echo', '/bin/echo', ['hi']],
      ['bash -l -c echo (SDK form)', '/bin/bash', ['-l', '-c', 'echo hi']],
    ];
    for (const [label, cmd, args] of cases) {
      const viaAgent: number[] = [];
      const baseline: number[] = [];
      for (let i = 0; i < WARMUP + ITERATIONS; i++) {
        // Interleaved so both see the same machine load.
        const a = await agentFirstByteMs(client, cmd, args);
        const b = await spawnFirstByteMs(cmd, args);
        if (i >= WARMUP) {
          viaAgent.push(a);
          baseline.push(b);
        }
      }
      console.log(summary(`agent Start→first stdout:  ${label}`, viaAgent));
      console.log(summary(`baseline spawn→first byte: ${label}`, baseline));
    }

    const remote = join(scratch, 'agent.bin');
    let t0 = performance.now();
    await httpUpload(agent.port, remote, patterned(FILE_MIB));
    const upMs = performance.now() - t0;
    t0 = performance.now();
    const got = await httpDownload(agent.port, remote);
    const downMs = performance.now() - t0;
    if (got !== FILE_MIB * MiB) throw new Error(`download returned ${got} bytes`);

    const local = join(scratch, 'local.bin');
    t0 = performance.now();
    await pipeline(patterned(FILE_MIB), createWriteStream(local));
    const localWriteMs = performance.now() - t0;
    t0 = performance.now();
    await pipeline(createReadStream(local), sink());
    const localReadMs = performance.now() - t0;

    const rate = (ms: number) => `${((FILE_MIB / ms) * 1000).toFixed(0).padStart(6)} MiB/s  (${ms.toFixed(0)} ms)`;
    console.log(`${'upload via POST /files (octet-stream)'.padEnd(52)} ${rate(upMs)}`);
    console.log(`${'baseline: local stream write, same bytes'.padEnd(52)} ${rate(localWriteMs)}`);
    console.log(`${'download via GET /files'.padEnd(52)} ${rate(downMs)}`);
    console.log(`${'baseline: local stream read, same file'.padEnd(52)} ${rate(localReadMs)}`);
  } finally {
    agent.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
