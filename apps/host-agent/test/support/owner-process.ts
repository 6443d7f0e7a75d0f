import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { build, stop, type Plugin } from 'esbuild';

/**
 * A stand-in for a host agent in a process of its own (an "owner"), to prove what outlives the agent: the owner is a
 * bundled .ts entry that starts something, prints `STARTED <json>` and idles until the test SIGKILLs its whole
 * process group, as an agent restart may.
 *
 * The owner runs below a subreaper (python3, prctl PR_SET_CHILD_SUBREAPER) in a session of its own: what it leaves
 * behind is reparented to the subreaper, which reaps it once it exits. Left to pid 1 it would stay a zombie on
 * machines whose init never reaps orphans (this one's container init does not), and leftovers must not pile up.
 */

const REAPER = `
import ctypes, os, subprocess, sys, time
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
    sys.exit('prctl(PR_SET_CHILD_SUBREAPER) failed')
owner = subprocess.Popen(sys.argv[1:], start_new_session=True)
print('OWNER', owner.pid, flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.05)
`;

/** Workspace libs (@kiln/*) are bundled from their TypeScript source; every other package stays a require(). */
const bundleWorkspaceLibsOnly: Plugin = {
  name: 'workspace-libs-only',
  setup(pluginBuild) {
    pluginBuild.onResolve({ filter: /^[^./]/ }, (args) => (args.path.startsWith('@kiln/') ? undefined : { path: args.path, external: true }));
  },
};

export async function bundleOwner(entry: string, outfile: string): Promise<void> {
  await build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    conditions: ['development'],
    plugins: [bundleWorkspaceLibsOnly],
    logLevel: 'error',
  });
  // esbuild's service process is this process's child: ended and reaped here rather than orphaned when jest exits.
  await stop();
}

export interface ReapedOwner<Started> {
  /** The owner's pid; it leads its own process group. */
  readonly pid: number;
  /** The subreaper: the parent of whatever the owner leaves behind once it is gone. */
  readonly reaperPid: number;
  /** What the owner printed after `STARTED `. */
  readonly started: Started;
  /** SIGKILL to the owner's process group (its plain children included); resolves once the owner is gone. */
  killGroup(): Promise<void>;
  /** Kills the owner's group if it is still there, then ends the subreaper; wait until what it should reap is reaped first. */
  stopReaper(): Promise<void>;
}

export async function startReapedOwner<Started>(bundle: string, args: string[], timeoutMs = 20_000): Promise<ReapedOwner<Started>> {
  const reaper: ChildProcess = spawn('python3', ['-c', REAPER, process.execPath, bundle, ...args], {
    env: { ...process.env, NODE_PATH: resolve(__dirname, '../../../../node_modules') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const reaperExited = new Promise<void>((resolveExit) => reaper.once('exit', () => resolveExit()));
  let stderr = '';
  reaper.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  let ownerPid: number | undefined;
  const killGroup = async (): Promise<void> => {
    if (ownerPid === undefined) return;
    try {
      process.kill(-ownerPid, 'SIGKILL');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
    }
    // Reaped by the subreaper: its /proc entry is gone.
    for (let waited = 0; existsSync(`/proc/${ownerPid}`); waited += 20) {
      if (waited > 5_000) throw new Error(`owner ${ownerPid} still exists 5 s after SIGKILL`);
      await new Promise((resolveDelay) => setTimeout(resolveDelay, 20));
    }
  };
  const stopReaper = async (): Promise<void> => {
    // The owner first (a test that failed early never killed it): it holds the pipes this process reads.
    await killGroup().catch(() => undefined);
    if (reaper.exitCode === null && reaper.signalCode === null) reaper.kill('SIGKILL');
    await reaperExited;
    reaper.stdout?.destroy();
    reaper.stderr?.destroy();
  };
  let started: Started;
  try {
    started = await new Promise((resolveStarted, reject) => {
      let stdout = '';
      const timer = setTimeout(() => reject(new Error(`owner did not start within ${timeoutMs} ms: ${stderr}`)), timeoutMs);
      reaper.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
        stdout += chunk;
        const ownerMatch = /^OWNER (\d+)$/m.exec(stdout);
        if (ownerMatch) ownerPid = Number(ownerMatch[1]);
        const match = /^STARTED (.*)$/m.exec(stdout);
        if (match) {
          clearTimeout(timer);
          resolveStarted(JSON.parse(match[1]) as Started);
        }
      });
      void reaperExited.then(() => {
        clearTimeout(timer);
        reject(new Error(`owner's subreaper exited: ${stderr}`));
      });
    });
  } catch (error) {
    await stopReaper();
    throw error;
  }
  if (ownerPid === undefined) throw new Error('the subreaper did not name the owner');
  return { pid: ownerPid, reaperPid: reaper.pid as number, started, killGroup, stopReaper };
}
