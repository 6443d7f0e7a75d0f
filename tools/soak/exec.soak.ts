/**
 * Soak: SOAK_SANDBOXES sandboxes (default 20) each run a short command in a loop for SOAK_MINUTES (default 10)
 * through one host agent's traffic proxy, with their own envd tokens. Every minute it prints a row: execs, errors,
 * exec p50/p99, the agent's RSS and open fds, and the number of QEMU processes under its data dir. At the end it says
 * whether the agent's RSS and fds stayed flat (last minute against the first) and exits non-zero on any exec error
 * or growth over the thresholds. Not part of CI: it takes the machine for its whole run.
 *
 * Run as root after `npx tsc -b apps/host-agent/tsconfig.json` and the guest image build:
 *   SOAK_MINUTES=2 SOAK_SANDBOXES=6 node tools/bench/run-bench.mjs tools/soak/exec.soak.ts
 * Env: SOAK_SANDBOXES (20), SOAK_MINUTES (10), SOAK_MAX_RSS_GROWTH_PERCENT (20), SOAK_MAX_FD_GROWTH (16).
 * The agent is started like the benches' (tools/bench/support/bench-host-agent.ts): data dir /var/lib/kiln-soak
 * (sharing the built templates), slot prefix ksoak, 10.210.0.0/24, ports 39440-39443; everything goes at the end.
 */
import 'reflect-metadata';
import { readdir, readFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import type { Client } from '@connectrpc/connect';
import { Process } from '@kiln/proto/process';
import { BenchAgent, startHostAgent, stopHostAgent } from '../bench/support/bench-host-agent';
import { envdProcess } from '../bench/support/envd-process';
import { percentile } from '../bench/support/sample-stats';

const SANDBOXES = Number(process.env.SOAK_SANDBOXES ?? 20);
const MINUTES = Number(process.env.SOAK_MINUTES ?? 10);
const MAX_RSS_GROWTH_PERCENT = Number(process.env.SOAK_MAX_RSS_GROWTH_PERCENT ?? 20);
const MAX_FD_GROWTH = Number(process.env.SOAK_MAX_FD_GROWTH ?? 16);
/** One exec that takes longer than this counts as an error (a hung guest or proxy must not stall its loop). */
const EXEC_TIMEOUT_MS = 30_000;
const MINUTE_MS = 60_000;
/** Error texts printed at the end, so a failed run says what failed. */
const ERROR_EXAMPLES_KEPT = 5;

/** What one minute of the soak saw. */
interface MinuteRow {
  minute: number;
  execs: number;
  errors: number;
  p50Ms: number;
  p99Ms: number;
  agentRssMib: number;
  agentOpenFds: number;
  qemuProcesses: number;
}

/** Exec results of the minute in progress; the loops add to it, the reporter swaps it out. */
interface MinuteSamples {
  execMs: number[];
  errors: number;
}

async function residentMib(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN) / 1024;
}

async function openFds(pid: number): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length;
}

/** QEMU processes whose command line names the agent's data dir (its sandboxes and pooled clones). */
async function qemuProcessesUnder(dataDir: string): Promise<number> {
  let count = 0;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.startsWith('qemu-system') || cmdline.includes('/qemu-system')) {
      if (cmdline.includes(`${dataDir}/`)) count++;
    }
  }
  return count;
}

/** Runs `cmd` to its end and returns how long it took; throws on a non-zero exit. */
async function execOnce(client: Client<typeof Process>): Promise<number> {
  const started = performance.now();
  let exitCode: number | undefined;
  for await (const response of client.start({ process: { cmd: '/bin/echo', args: ['soak'], envs: {} } }, { timeoutMs: EXEC_TIMEOUT_MS })) {
    const event = response.event?.event;
    if (event?.case === 'end') exitCode = event.value.exitCode;
  }
  if (exitCode !== 0) throw new Error(`echo ended with exit code ${exitCode ?? '(no end event)'}`);
  return performance.now() - started;
}

function formatRow(row: MinuteRow): string {
  const cells = [row.minute, row.execs, row.errors, row.p50Ms.toFixed(1), row.p99Ms.toFixed(1), row.agentRssMib.toFixed(1), row.agentOpenFds, row.qemuProcesses];
  return `| ${cells.map(String).join(' | ')} |`;
}

async function main(): Promise<void> {
  const agent: BenchAgent = await startHostAgent('soak', {
    ports: { http: 39_440, grpc: 39_441, proxy: 39_442 },
    dataDir: '/var/lib/kiln-soak',
    prefix: 'ksoak',
    cidr: '10.210.0.0/24',
    poolSize: 2,
    // The soak asks for more sandboxes than the detected capacity admits on a small host: every one is mostly idle
    // between execs, so vCPUs are overcommitted on purpose here.
    env: { KILN_MAX_SANDBOXES: String(Math.max(24, SANDBOXES)), KILN_CAPACITY_VCPUS: String(Math.max(16, SANDBOXES + 2)) },
  });
  const agentPid = agent.process.pid!;
  const sandboxIds: string[] = [];
  const errorExamples: string[] = [];
  let failed = false;
  try {
    const base = (await agent.client.hostInfo()).templates.find((t: { templateId: string }) => t.templateId === 'base');
    if (!base) throw new Error('the agent has no `base` template');
    console.log(`soak: ${SANDBOXES} sandboxes, ${MINUTES} min, template base/${base.buildId}, agent pid ${agentPid}`);

    const createStarted = performance.now();
    for (let i = 0; i < SANDBOXES; i++) {
      const sandboxId = `ksoak-${i}`;
      await agent.client.createSandbox({
        sandboxId, templateId: 'base', buildId: base.buildId, vcpus: 0, memoryMib: 0, envVars: {}, metadata: {},
        envdAccessToken: `soak-token-${i}`, timeoutSeconds: 3600, teamId: 'soak', egress: { allowOut: [], denyOut: [] }, snapshotId: '',
      });
      sandboxIds.push(sandboxId);
    }
    console.log(`created ${SANDBOXES} sandboxes in ${((performance.now() - createStarted) / 1000).toFixed(1)} s\n`);

    let current: MinuteSamples = { execMs: [], errors: 0 };
    const endAt = performance.now() + MINUTES * MINUTE_MS;
    const loops = sandboxIds.map(async (sandboxId, i) => {
      const client = envdProcess(`http://127.0.0.1:${agent.ports.proxy}`, { 'E2b-Sandbox-Id': sandboxId, 'X-Access-Token': `soak-token-${i}` });
      while (performance.now() < endAt) {
        try {
          current.execMs.push(await execOnce(client));
        } catch (error) {
          current.errors++;
          if (errorExamples.length < ERROR_EXAMPLES_KEPT) errorExamples.push(`${sandboxId}: ${error instanceof Error ? error.message : String(error)}`);
        }
      }
    });

    console.log('| minute | execs | errors | exec p50 ms | exec p99 ms | agent RSS MiB | agent open fds | qemu processes |');
    console.log('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    const rows: MinuteRow[] = [];
    for (let minute = 1; minute <= MINUTES; minute++) {
      await new Promise((r) => setTimeout(r, Math.max(0, endAt - (MINUTES - minute) * MINUTE_MS - performance.now())));
      const samples = current;
      current = { execMs: [], errors: 0 };
      const row: MinuteRow = {
        minute,
        execs: samples.execMs.length + samples.errors,
        errors: samples.errors,
        p50Ms: samples.execMs.length ? percentile(samples.execMs, 50) : NaN,
        p99Ms: samples.execMs.length ? percentile(samples.execMs, 99) : NaN,
        agentRssMib: await residentMib(agentPid),
        agentOpenFds: await openFds(agentPid),
        qemuProcesses: await qemuProcessesUnder(agent.dataDir),
      };
      rows.push(row);
      console.log(formatRow(row));
    }
    await Promise.all(loops);
    // Errors of the execs that ended after the last row (each loop's last exec may run over the end) still count.
    if (current.errors > 0) rows[rows.length - 1].errors += current.errors;

    const first = rows[0];
    const last = rows[rows.length - 1];
    const rssGrowthPercent = ((last.agentRssMib - first.agentRssMib) / first.agentRssMib) * 100;
    const fdGrowth = last.agentOpenFds - first.agentOpenFds;
    const rssFlat = rssGrowthPercent <= MAX_RSS_GROWTH_PERCENT;
    const fdsFlat = fdGrowth <= MAX_FD_GROWTH;
    const errors = rows.reduce((sum, r) => sum + r.errors, 0);
    const execs = rows.reduce((sum, r) => sum + r.execs, 0);
    console.log(
      `\nagent RSS ${first.agentRssMib.toFixed(1)} -> ${last.agentRssMib.toFixed(1)} MiB (${rssGrowthPercent >= 0 ? '+' : ''}${rssGrowthPercent.toFixed(1)}%, limit +${MAX_RSS_GROWTH_PERCENT}%): ${rssFlat ? 'flat' : 'GROWING'}`,
    );
    console.log(`agent open fds ${first.agentOpenFds} -> ${last.agentOpenFds} (${fdGrowth >= 0 ? '+' : ''}${fdGrowth}, limit +${MAX_FD_GROWTH}): ${fdsFlat ? 'flat' : 'GROWING'}`);
    console.log(`${execs} execs, ${errors} errors`);
    for (const example of errorExamples) console.log(`  error: ${example}`);
    failed = errors > 0 || !rssFlat || !fdsFlat;
  } finally {
    await Promise.all(sandboxIds.map((sandboxId) => agent.client.destroySandbox({ sandboxId }).catch(() => undefined)));
    await stopHostAgent(agent);
  }
  if (failed) process.exitCode = 1;
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
