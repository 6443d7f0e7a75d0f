/**
 * VM start paths on this host: clone restore from the template snapshot (QEMU -incoming with
 * x-ignore-shared, memory file mapped private) against a cold boot of the same template, in
 * one run, plus the host memory (PSS) of idle clones.
 *
 * Run as root after `npx nx run guest-image:build`:
 *   node tools/bench/run-bench.mjs tools/bench/vm-restore.bench.ts
 * Env: BENCH_ITERATIONS (restores, default 20), BENCH_COLD_BOOTS (default 3), BENCH_IDLE_CLONES
 * (default 4), BENCH_IDLE_MS (idle time before measuring, default 3000), KILN_DATA_DIR, KILN_VMM_TCG_TB_MIB. Uses its own slot prefix (kbvm, 10.204.0.0/24)
 * and scratch dir; removes both at the end. Creates the `base` snapshot if it does not exist.
 */
import 'reflect-metadata';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { NetworkSlot } from '../../apps/host-agent/src/network';
import type { RootfsLayer } from '../../apps/host-agent/src/rootfs';
import { waitForGuestAgent } from '../../apps/host-agent/src/guest-agent-client';
import { coldBootSpec } from '../../apps/host-agent/src/template';
import type { VmHandle } from '../../apps/host-agent/src/vmm';
import { report } from './support/sample-stats';
import { vmLayerForBench } from './support/vm-layer';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 20);
const COLD_BOOTS = Number(process.env.BENCH_COLD_BOOTS ?? 3);
const IDLE_CLONES = Number(process.env.BENCH_IDLE_CLONES ?? 4);



interface MemoryUsage {
  pss: number;
  rss: number;
  /** Private anonymous memory: QEMU's heap, TCG translation buffer, and the guest's copy-on-write pages. */
  pssAnon: number;
  /** Share of file pages: mostly the template memory file, split among every clone mapping it. */
  pssFile: number;
}

async function memoryMib(pid: number): Promise<MemoryUsage> {
  const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(rollup)?.[1] ?? NaN) / 1024;
  return { pss: field('Pss'), rss: field('Rss'), pssAnon: field('Pss_Anon'), pssFile: field('Pss_File') };
}

async function main(): Promise<void> {
  const workDir = await mkdtemp('/tmp/kiln-vm-bench-');
  const { pool, layers, config, templates, probe, driver, snapshots } = vmLayerForBench({ slotPrefix: 'kbvm', slotCidr: '10.204.0.0/24', workDir, bootTimeoutMs: 120_000 });
  const live = new Set<VmHandle>();
  try {
    await pool.init();
    const accel = await probe.report();
    console.log(`accelerator: ${accel.accelerator} (${accel.source}: ${accel.detail}); TCG tb-size ${config.tcgTranslationBufferMib} MiB`);

    const t0 = performance.now();
    const snapshot = await snapshots.ensure('base');
    console.log(
      `template snapshot base/${snapshot.build.buildId}: ready in ${(performance.now() - t0).toFixed(0)} ms ` +
        `(state ${snapshot.manifest.files.state.bytes} B, memory ${snapshot.manifest.memoryMib} MiB, ` +
        `saved in ${snapshot.manifest.timings.saveMs} ms when created)`,
    );

    let n = 0;
    const startClone = async (): Promise<{ vm: VmHandle; slot: NetworkSlot; layer: RootfsLayer; ms: number; agentMs: number }> => {
      const id = `kbvm-${process.pid}-${n++}`;
      const slot = await pool.acquire();
      const layer = await layers.createLayer(id, snapshot.disk, workDir);
      const started = performance.now();
      const vm = await snapshots.restore(snapshot, {
        id,
        stateDir: join(workDir, id),
        serialLogPath: join(workDir, `${id}.serial.log`),
        rootDisk: { path: layer.path, format: layer.format },
        network: { netnsPath: slot.netnsPath, tapName: slot.tapName, guestMac: slot.guestMac },
      });
      live.add(vm);
      const ms = performance.now() - started;
      await waitForGuestAgent(slot.hostAddress, snapshot.build.agentPort, { timeoutMs: 30_000, intervalMs: 2, requestTimeoutMs: 2_000 });
      return { vm, slot, layer, ms, agentMs: performance.now() - started };
    };
    const stopClone = async (clone: { vm: VmHandle; slot: NetworkSlot; layer: RootfsLayer }) => {
      await clone.vm.kill();
      live.delete(clone.vm);
      await layers.removeLayer(clone.layer);
      await pool.release(clone.slot);
    };

    console.log('\n== clone restore from the template snapshot (sequential) ==');
    const spawnToControl: number[] = [];
    const toRunning: number[] = [];
    const toAgent: number[] = [];
    for (let i = 0; i < ITERATIONS; i++) {
      const clone = await startClone();
      spawnToControl.push(clone.vm.startTimings!.controlReadyMs);
      toRunning.push(clone.ms);
      toAgent.push(clone.agentMs);
      await stopClone(clone);
    }
    report('restore: qemu spawn -> QMP ready', spawnToControl);
    report('restore: call -> guest running (driver.restore)', toRunning);
    report('restore: call -> agent GET /health 204', toAgent);

    console.log('\n== prepared restore: VMM started ahead, then start() (sequential) ==');
    const preparedToRunning: number[] = [];
    const preparedToAgent: number[] = [];
    for (let i = 0; i < ITERATIONS; i++) {
      const id = `kbvm-${process.pid}-${n++}`;
      const slot = await pool.acquire();
      const layer = await layers.createLayer(id, snapshot.disk, workDir);
      const prepared = await snapshots.prepareClone(snapshot, {
        id,
        stateDir: join(workDir, id),
        serialLogPath: join(workDir, `${id}.serial.log`),
        rootDisk: { path: layer.path, format: layer.format },
        network: { netnsPath: slot.netnsPath, tapName: slot.tapName, guestMac: slot.guestMac },
      });
      live.add(prepared.handle);
      const started = performance.now();
      const vm = await prepared.start();
      preparedToRunning.push(performance.now() - started);
      await waitForGuestAgent(slot.hostAddress, snapshot.build.agentPort, { timeoutMs: 30_000, intervalMs: 2, requestTimeoutMs: 2_000 });
      preparedToAgent.push(performance.now() - started);
      await stopClone({ vm, slot, layer });
    }
    report('prepared: start() -> guest running', preparedToRunning);
    report('prepared: start() -> agent GET /health 204', preparedToAgent);

    console.log(`\n== idle clones: host memory per clone (${IDLE_CLONES} running at once) ==`);
    const clones = [];
    for (let i = 0; i < IDLE_CLONES; i++) clones.push(await startClone());
    await new Promise((r) => setTimeout(r, Number(process.env.BENCH_IDLE_MS ?? 3_000)));
    const usages = await Promise.all(clones.map((clone) => memoryMib(clone.vm.pid)));
    report('idle clone PSS', usages.map((u) => u.pss), { unit: 'MiB' });
    report('  of which private anonymous (Pss_Anon)', usages.map((u) => u.pssAnon), { unit: 'MiB' });
    report('  of which shared file share (Pss_File)', usages.map((u) => u.pssFile), { unit: 'MiB' });
    report('idle clone RSS', usages.map((u) => u.rss), { unit: 'MiB' });
    for (const clone of clones) await stopClone(clone);

    console.log('\n== baseline: cold boot of the same template (same run) ==');
    const base = await templates.resolve('base');
    const coldRunning: number[] = [];
    const coldAgent: number[] = [];
    for (let i = 0; i < COLD_BOOTS; i++) {
      const id = `kbvm-cold-${process.pid}-${i}`;
      const slot = await pool.acquire();
      const layer = await layers.createLayer(id, base.rootfs, workDir);
      const started = performance.now();
      const vm = await driver.spawn(
        coldBootSpec(base, { id, rootDisk: { path: layer.path, format: layer.format }, slot, stateDir: join(workDir, id), serialLogPath: join(workDir, `${id}.serial.log`) }),
      );
      live.add(vm);
      coldRunning.push(performance.now() - started);
      await waitForGuestAgent(slot.hostAddress, base.agentPort, { timeoutMs: 120_000, intervalMs: 20 });
      coldAgent.push(performance.now() - started);
      await stopClone({ vm, slot, layer });
    }
    if (COLD_BOOTS > 0) {
      report('cold boot: call -> guest running', coldRunning);
      report('cold boot: call -> agent GET /health 204', coldAgent);
    }
  } finally {
    for (const vm of live) await vm.kill().catch(() => undefined);
    await pool.destroyAll().catch(() => undefined);
    await rm(workDir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
