/**
 * Stand-in for a host agent in its own process (see test/support/owner-process.ts): restores VMs with a
 * FirecrackerDriver against the fake jailer and Firecracker and the real UFFD worker (options as JSON in argv[2]),
 * prints `STARTED {"vmPids":[…]}` and idles until it is killed.
 */
import 'reflect-metadata';
import { FirecrackerDriver } from '../../src/vmm/firecracker/firecracker.driver';
import { UffdWorkerSupervisor } from '../../src/vmm/uffd';
import { VmmConfig, type FirecrackerHostSettings } from '../../src/vmm/vmm.config';
import type { VmSnapshotRef, VmSpec } from '../../src/vmm/vmm-driver';

interface OwnerOptions {
  dataDir: string;
  firecracker: FirecrackerHostSettings;
  uffdWorkerBinary: string;
  restores: Array<{ spec: VmSpec; snapshot: VmSnapshotRef }>;
}

async function main(): Promise<void> {
  const options = JSON.parse(process.argv[2]) as OwnerOptions;
  const config = new VmmConfig(options.dataDir, 'qemu-system-x86_64', 'kvm', 128, 1000, undefined, 'firecracker', options.firecracker, options.uffdWorkerBinary);
  const driver = new FirecrackerDriver(config, new UffdWorkerSupervisor(config.uffdWorkerBinary));
  const vmPids: number[] = [];
  for (const { spec, snapshot } of options.restores) vmPids.push((await driver.restore(spec, snapshot)).pid);
  process.stdout.write(`STARTED ${JSON.stringify({ vmPids })}\n`);
  setInterval(() => undefined, 60_000);
}

main().catch((error: unknown) => {
  process.stderr.write(`${String(error)}\n`);
  process.exit(1);
});
