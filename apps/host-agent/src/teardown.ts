import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ConfigModule, HostAgentEnv, describeError, loadConfig, runOrExit } from '@kiln/config';
import { VmCgroups } from './cgroup';
import { removeUnclaimedClones } from './clone-pool';
import { hostResourceModules } from './host-modules';
import { NetworkSlotPool } from './network';
import { RootfsLayers } from './rootfs';
import { RecordSealer } from './sandbox/record-sealer';
import { SandboxRecordStore } from './sandbox/sandbox-record';
import { VMM_DRIVER, VmmDriver, VmmModule } from './vmm';

/**
 * `npm run down`'s host cleanup, run after the agent process stopped: kills every
 * sandbox VM and pooled clone the agent owned, removes their disk layers and records, and
 * removes every network slot and firewall table the agent made. Images and snapshots stay.
 */
void runOrExit('host-agent-teardown', async () => {
  // Teardown opens no sealed secrets (see below), so it runs without the agent's state key: any real-looking key will do.
  const env = loadConfig(HostAgentEnv, { KILN_HOST_STATE_KEY: randomBytes(32).toString('base64url'), ...process.env });
  const host = hostResourceModules(env);

  // The env as a provider: the VMM and cgroup settings (the cgroup parent is named after the network prefix).
  @Module({ imports: [ConfigModule.forRoot(HostAgentEnv, env), host.network, host.rootfs, VmmModule] })
  class TeardownModule {}

  const app = await NestFactory.createApplicationContext(TeardownModule, { logger: ['error', 'warn'], abortOnError: false });
  // Teardown reads no secrets: a sealer with any key lists the records (tokens it cannot open are left out).
  const records = new SandboxRecordStore(join(env.KILN_DATA_DIR, 'sandboxes'), new RecordSealer(env.KILN_HOST_STATE_KEY));
  const vmm = app.get<VmmDriver>(VMM_DRIVER);
  const layers = app.get(RootfsLayers);
  let problems = 0;
  for (const { sandboxId, record } of await records.scan()) {
    if (record) {
      await vmm.terminate(record.vmStateDir);
      // A layer in a clone directory goes with the directory below; older records kept it beside the record.
      if (!record.cloneDir) {
        await layers.removeLayer({ path: record.rootfs.path, sandboxId }).catch((error) => {
          problems++;
          process.stderr.write(`layer of ${sandboxId}: ${describeError(error)}\n`);
        });
      }
    }
    await records.remove(sandboxId);
  }
  // Clones the agent kept ready (and the clone directories of the sandboxes above).
  await removeUnclaimedClones(join(env.KILN_DATA_DIR, 'clones'), new Set(), vmm);
  // Every VM is gone: their cgroups and the agent's parent group go too.
  if (!(await app.get(VmCgroups).removeAll())) {
    problems++;
    process.stderr.write('some VM cgroups still hold processes; kept\n');
  }
  const pool = app.get(NetworkSlotPool);
  await pool.init([]);
  await pool.destroyAll();
  await app.close();
  process.stdout.write(`host teardown done${problems ? ` with ${problems} problem(s)` : ''}\n`);
});
