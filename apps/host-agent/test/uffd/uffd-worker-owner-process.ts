/**
 * Stand-in for a host agent in its own process (see test/support/owner-process.ts): starts one real UFFD worker
 * through UffdWorkerSupervisor (options as JSON in argv[2]: binaryPath, snapshotDir, socketPath, statsSocketPath) and
 * an ordinary child (`sleep`), the control for what a signal to this process's group reaches; prints
 * `STARTED {"workerPid":…,"sleepPid":…}` and idles until it is killed.
 */
import 'reflect-metadata';
import { spawn } from 'node:child_process';
import { UffdWorkerSupervisor } from '../../src/vmm/uffd';

interface OwnerOptions {
  binaryPath: string;
  snapshotDir: string;
  socketPath: string;
  statsSocketPath: string;
}

async function main(): Promise<void> {
  const options = JSON.parse(process.argv[2]) as OwnerOptions;
  const worker = await new UffdWorkerSupervisor(options.binaryPath).start({ ...options, timeoutMs: 10_000 });
  const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' });
  process.stdout.write(`STARTED ${JSON.stringify({ workerPid: worker.pid, sleepPid: sleeper.pid })}\n`);
  setInterval(() => undefined, 60_000);
}

main().catch((error: unknown) => {
  process.stderr.write(`${String(error)}\n`);
  process.exit(1);
});
