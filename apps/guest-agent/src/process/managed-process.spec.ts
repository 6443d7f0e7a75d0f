import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { EventQueue } from '../streaming/event-queue';
import { loadGuestAddon, type PipeCalls } from '../runtime/guest-kernel';
import { PipeProcess, PtyProcess, type ManagedProcess, type ProcessOutput, type ProcessSpec } from './managed-process';

function specFor(script: string, pty = false): ProcessSpec {
  const uid = process.getuid!();
  const gid = process.getgid!();
  return {
    cmd: '/bin/bash',
    args: ['-c', script],
    envs: {},
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    cwd: tmpdir(),
    uid,
    gid,
    groups: [gid],
    resetOomScore: false,
    stdin: false,
    pty: pty ? { cols: 80, rows: 24 } : undefined,
  };
}

interface Drained {
  stdout: string;
  stderr: string;
  pty: string;
  status?: { exitCode: number; status: string };
  /** Milliseconds from the start of the drain to the end event. */
  endedAfterMs: number;
}

async function drain(queue: EventQueue<ProcessOutput>, options: { stallFirstMs?: number } = {}): Promise<Drained> {
  const started = Date.now();
  const out: Drained = { stdout: '', stderr: '', pty: '', endedAfterMs: -1 };
  let stall = options.stallFirstMs ?? 0;
  for (;;) {
    if (stall > 0) {
      await new Promise((r) => setTimeout(r, stall));
      stall = 0;
    }
    const next = await queue.pull(60_000);
    if (next.kind !== 'item') return out;
    const item = next.item;
    if (item.kind === 'end') {
      out.status = { exitCode: item.status.exitCode, status: item.status.status };
      out.endedAfterMs = Date.now() - started;
      return out;
    }
    out[item.kind] += item.data.toString();
  }
}

async function run(start: () => Promise<ManagedProcess> | ManagedProcess, options?: { stallFirstMs?: number }): Promise<Drained> {
  const started = await start();
  const queue = started.subscribe();
  try {
    return await drain(queue, options);
  } finally {
    started.unsubscribe(queue);
    // What the command left running in its process group (the background children under test) goes too.
    started.signal('SIGKILL');
  }
}

async function waitFor(probe: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (probe()) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return probe();
}

const seqOutput = (n: number) => Array.from({ length: n }, (_, i) => `${i + 1}\n`).join('');

describe('PipeProcess ends with its own process, not with the last holder of its pipes', () => {
  let pipes: PipeCalls;
  let scratch: string;

  beforeAll(async () => {
    pipes = loadGuestAddon();
    scratch = await mkdtemp(join(tmpdir(), 'kiln-pipe-'));
  });

  afterAll(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  it('ends `sleep 8 & echo started` at once with its output, the sleep still running', async () => {
    const marker = join(scratch, 'sleep-done');
    const result = await run(() => PipeProcess.spawn(specFor(`(sleep 8; touch ${marker}) & echo started`), pipes));
    expect(result.stdout).toBe('started\n');
    expect(result.status).toEqual({ exitCode: 0, status: 'exit status 0' });
    expect(result.endedAfterMs).toBeLessThan(2000);
    expect(existsSync(marker)).toBe(false);
  });

  it('delivers everything written before the exit, in order, even when the subscriber lags, and nothing a background writer adds later', async () => {
    // A bit over the 1 MiB high-water mark: the agent pauses reading while the rest still fits in the pipe, so the
    // command exits with its last bytes unread; the background writer then adds 'b's after them.
    const size = (1 << 20) + 40_000;
    const marker = join(scratch, 'writer-done');
    const script = `(sleep 0.3; head -c 300000 /dev/zero | tr '\\0' b; touch ${marker}) & head -c ${size} /dev/zero | tr '\\0' a`;
    const result = await run(() => PipeProcess.spawn(specFor(script), pipes), { stallFirstMs: 800 });
    expect(result.stdout.length).toBe(size);
    expect(result.stdout).toBe('a'.repeat(size));
    expect(result.status?.exitCode).toBe(0);
    // The background writer is neither blocked on a full pipe nor killed by SIGPIPE: the agent keeps reading.
    expect(await waitFor(() => existsSync(marker), 5000)).toBe(true);
  });

  it('delivers large outputs completely (seq 1 200000), stdout and stderr apart', async () => {
    const result = await run(() => PipeProcess.spawn(specFor('seq 1 200000; seq 1 1000 >&2; exit 3'), pipes));
    expect(result.stdout).toBe(seqOutput(200000));
    expect(result.stderr).toBe(seqOutput(1000));
    expect(result.status).toEqual({ exitCode: 3, status: 'exit status 3' });
  });

  it('does not stay open for a background process that keeps writing', async () => {
    const result = await run(() =>
      PipeProcess.spawn(specFor('(for i in $(seq 1 400); do echo noise; sleep 0.01; done) & echo foreground'), pipes),
    );
    expect(result.stdout.startsWith('foreground\n')).toBe(true);
    expect(result.endedAfterMs).toBeLessThan(2000);
  });

  it('without the native addon falls back to a bounded quiet period, still complete for a plain command', async () => {
    const quick = await run(() => PipeProcess.spawn(specFor('sleep 8 & echo started'), undefined));
    expect(quick.stdout).toBe('started\n');
    expect(quick.endedAfterMs).toBeLessThan(3000);
    const big = await run(() => PipeProcess.spawn(specFor('seq 1 200000'), undefined));
    expect(big.stdout).toBe(seqOutput(200000));
    const chatty = await run(() =>
      PipeProcess.spawn(specFor('(for i in $(seq 1 400); do echo noise; sleep 0.01; done) & echo foreground'), undefined),
    );
    expect(chatty.endedAfterMs).toBeLessThan(3000);
  });
});

describe('PtyProcess ends with its own process too', () => {
  let pipes: PipeCalls;

  beforeAll(() => {
    pipes = loadGuestAddon();
  });

  it('ends `sleep 8 & echo started` promptly', async () => {
    // nohup: a terminal's hangup would otherwise take the sleep down with the shell, which proves nothing.
    const result = await run(() => PtyProcess.spawn(specFor('nohup sleep 8 >/dev/null 2>&1 & echo started', true), pipes));
    expect(result.pty).toContain('started');
    expect(result.status?.exitCode).toBe(0);
    expect(result.endedAfterMs).toBeLessThan(2000);
  });

  it('does not stay open for a background process that keeps writing to the terminal', async () => {
    const result = await run(() =>
      PtyProcess.spawn(specFor("trap '' HUP; (trap '' HUP; for i in $(seq 1 400); do echo noise; sleep 0.01; done) & echo foreground", true), pipes),
    );
    expect(result.pty).toContain('foreground');
    expect(result.endedAfterMs).toBeLessThan(2500);
  });

  it('delivers a short line written right before a quick exit, every time, with and without the native addon', async () => {
    // The kernel hands a terminal's output to the reader in deferred work, so at the exit it can still be in
    // flight; ending on "nothing has arrived yet" used to lose it now and then.
    for (const calls of [pipes, undefined]) {
      for (let i = 0; i < 15; i++) {
        const result = await run(() => PtyProcess.spawn(specFor(`echo line-${i}`, true), calls));
        expect(result.pty).toContain(`line-${i}`);
        expect(result.status?.exitCode).toBe(0);
      }
    }
  });

  it('still delivers a burst written right before the exit completely', async () => {
    const result = await run(() => PtyProcess.spawn(specFor('seq 1 100000; echo LAST-LINE', true), pipes), { stallFirstMs: 500 });
    expect(result.pty).toContain('99999\r\n100000\r\nLAST-LINE');
  });
});
