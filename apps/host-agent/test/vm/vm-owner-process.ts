/**
 * Stand-in for a host agent in its own process: starts one VM (spec as JSON in argv[2]),
 * prints `STARTED <pid>` and then idles until it is killed. The test kills it with SIGKILL
 * to check that the VM outlives the process that started it.
 */
import 'reflect-metadata';
import { TemplateStore } from '../../src/template';
import { AccelerationProbe, QemuMicrovmDriver, VmmConfig, type VmSpec } from '../../src/vmm';

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2]) as VmSpec;
  const config = VmmConfig.fromEnv();
  const driver = new QemuMicrovmDriver(config, new AccelerationProbe(config, new TemplateStore({ dataDir: config.dataDir })));
  const vm = await driver.spawn(spec, { startPaused: true });
  process.stdout.write(`STARTED ${vm.pid}\n`);
  setInterval(() => undefined, 60_000);
}

main().catch((error: unknown) => {
  process.stderr.write(`${String(error)}\n`);
  process.exit(1);
});
