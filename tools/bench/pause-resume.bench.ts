/**
 * Pause, resume and fork with memory (issue 13), at the VMM level: the driver's checkpoint of a clone (device state
 * plus the guest pages it changed from the template memory file) and its restore, against QEMU restoring the same
 * VM's full state (RAM and devices, one migration stream) by itself, in one run.
 *
 * Run as root after `npx nx run guest-image:build`:
 *   node tools/bench/run-bench.mjs tools/bench/pause-resume.bench.ts
 * Env: BENCH_ITERATIONS (pause/resume cycles per size, default 10), BENCH_MEMORY_MIB (default 256,512,1024),
 * BENCH_WRITE_MIB (guest data written before each pause, default 16), BENCH_FORKS (default 1,3,10), BENCH_IDLE_MS
 * (idle time before PSS is read, default 2000), KILN_DATA_DIR, KILN_VMM_TCG_TB_MIB.
 *
 * Uses its own slot prefix (kbpr, 10.222.0.0/24) and scratch dir, and registers private templates (`kbpr-<size>m-<pid>`,
 * hard links to base's build files with their own template.json) for the sizes base does not have; their snapshots are
 * made on first use (a cold boot each). Removes VMs, slots, layers, scratch dir and private templates at the end.
 */
import 'reflect-metadata';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { copyFile, link, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { VmCgroups, VmCgroupsConfig } from '../../apps/host-agent/src/cgroup';
import { CHECKPOINT_FILES, CheckpointStore, checkpointVmShape, type CheckpointKind, type CheckpointManifest } from '../../apps/host-agent/src/checkpoint';
import { waitForGuestAgent } from '../../apps/host-agent/src/guest-agent-client';
import { GUEST_AGENT_PORT, type NetworkSlot } from '../../apps/host-agent/src/network';
import type { RootfsLayer } from '../../apps/host-agent/src/rootfs';
import type { TemplateSnapshot } from '../../apps/host-agent/src/snapshot';
import type { TemplateStore } from '../../apps/host-agent/src/template';
import { QmpClient, type VmCheckpoint, type VmHandle, type VmSnapshotRef, type VmSpec } from '../../apps/host-agent/src/vmm';
import { hostTscKhz } from '../../apps/host-agent/src/vmm/host-tsc';
import { buildQemuArgs, SNAPSHOT_SOCKET_NAME, snapshotSocketPath } from '../../apps/host-agent/src/vmm/qemu-command-line';
import { parseQemuVersion, readQemuVersionLine } from '../../apps/host-agent/src/vmm/qemu-version';
import { SnapshotReceiver } from '../../apps/host-agent/src/vmm/vm-confinement';
import type { VmmIdentity } from '../../apps/host-agent/src/vmm/vmm-identities';
import { envdProcess } from './support/envd-process';
import { percentile, report } from './support/sample-stats';
import { benchCloneOptions, vmLayerForBench } from './support/vm-layer';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 10);
const SIZES_MIB = (process.env.BENCH_MEMORY_MIB ?? '256,512,1024').split(',').map(Number).filter((size) => size > 0);
const WRITE_MIB = Number(process.env.BENCH_WRITE_MIB ?? 16);
/** As SandboxManager.fork (FORK_CONCURRENCY). */
const FORK_CONCURRENCY = 4;
const FORK_COUNTS = (process.env.BENCH_FORKS ?? '1,3,10').split(',').map(Number).filter((count) => count > 0);
const FORK_SOURCE_MIB = 512;
const IDLE_MS = Number(process.env.BENCH_IDLE_MS ?? 2_000);
const AGENT_WAIT = { timeoutMs: 60_000, intervalMs: 2, requestTimeoutMs: 2_000 };
const MIB = 1024 * 1024;

interface Clone {
  vm: VmHandle;
  spec: VmSpec;
  slot: NetworkSlot;
  layer: RootfsLayer;
}

interface MemoryUsage {
  pss: number;
  pssAnon: number;
  pssFile: number;
  rss: number;
}

async function memoryUsage(pid: number): Promise<MemoryUsage> {
  const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(rollup)?.[1] ?? NaN) / 1024;
  return { pss: field('Pss'), pssAnon: field('Pss_Anon'), pssFile: field('Pss_File'), rss: field('Rss') };
}

const mib = (bytes: number) => `${(bytes / MIB).toFixed(1)} MiB`;
const p50 = (samples: number[]) => percentile(samples, 50);

/** Runs a shell command in the guest through the guest agent's process API (as user `user`); returns stdout. */
async function guestRun(slot: NetworkSlot, port: number, command: string): Promise<string> {
  // No keep-alive: a slot's address comes back with another VM behind it, and a pooled connection would hit a dead guest.
  const client = envdProcess(`http://${slot.hostAddress}:${port}`, {}, { agent: false });
  let out = '';
  for await (const response of client.start({ process: { cmd: '/bin/bash', args: ['-c', command], envs: {} } }, { timeoutMs: 120_000 })) {
    const event = response.event?.event;
    if (event?.case === 'data' && event.value.output.case === 'stdout') out += Buffer.from(event.value.output.value).toString();
    if (event?.case === 'data' && event.value.output.case === 'stderr') out += Buffer.from(event.value.output.value).toString();
  }
  return out;
}

/** A template of `memoryMib` MiB: base's build files hard-linked, its own template.json. Snapshot made on first ensure(). */
async function registerSizedTemplate(templates: TemplateStore, name: string, memoryMib: number): Promise<string> {
  const base = await templates.resolve('base');
  const templateDir = join(templates.root, name);
  await rm(templateDir, { recursive: true, force: true });
  const buildDir = join(templateDir, base.buildId);
  await mkdir(buildDir, { recursive: true });
  for (const file of ['vmlinuz', 'initramfs.cpio.gz', 'rootfs.ext4', 'kernel.release']) await link(join(base.dir, file), join(buildDir, file));
  const manifest = JSON.parse(await readFile(join(base.dir, 'template.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(buildDir, 'template.json'), JSON.stringify({ ...manifest, templateId: name, memoryMib }, null, 2));
  await symlink(base.buildId, join(templateDir, 'current'));
  return templateDir;
}

/** What the agent seals for a checkpoint (CheckpointStore needs a manifest to verify against). */
function manifestOf(id: string, kind: CheckpointKind, snapshot: TemplateSnapshot, spec: VmSpec): Omit<CheckpointManifest, 'files' | 'formatVersion'> {
  return {
    id,
    kind,
    sourceSandboxId: id,
    teamId: 'bench',
    templateId: snapshot.build.templateId,
    buildId: snapshot.build.buildId,
    keepMemory: true,
    // As the agent names a template snapshot's memory file: by the sha256 its snapshot manifest records.
    vm: checkpointVmShape(spec, `sha256:${snapshot.manifest.files.memory?.sha256}`, snapshot.build.agentPort ?? GUEST_AGENT_PORT),
    createdAt: new Date().toISOString(),
    timings: {},
  };
}

function checkpointFiles(checkpoint: VmCheckpoint): Record<string, { sha256?: string }> {
  return {
    [CHECKPOINT_FILES.deviceState]: { sha256: checkpoint.sha256.state },
    [CHECKPOINT_FILES.memoryPages]: { sha256: checkpoint.sha256.pages },
    [CHECKPOINT_FILES.memoryIndex]: { sha256: checkpoint.sha256.index },
  };
}

function checkpointRef(dir: string): VmSnapshotRef {
  return {
    statePath: join(dir, CHECKPOINT_FILES.deviceState),
    changedMemory: { pagesPath: join(dir, CHECKPOINT_FILES.memoryPages), indexPath: join(dir, CHECKPOINT_FILES.memoryIndex) },
  };
}

/**
 * The raw-restore baseline's input: QEMU's own migration of the stopped clone (all of its RAM and its devices) into
 * `destination`, through a socket in the clone's chroot (as VmHandle.snapshot does). The clone's handle must have been
 * detached: QEMU serves one QMP connection at a time.
 */
async function migrateFullState(stateDir: string, destination: string): Promise<{ bytes: number; ms: number }> {
  const record = JSON.parse(await readFile(join(stateDir, 'vm.json'), 'utf8')) as { identity?: VmmIdentity };
  const qmp = await QmpClient.connect(join(stateDir, 'qmp.sock'), 10_000);
  const started = performance.now();
  const receiver = await SnapshotReceiver.listen(snapshotSocketPath(stateDir), destination, record.identity);
  try {
    // The clone loaded its snapshot with x-ignore-shared on; its RAM is a private mapping, so all of it is sent anyway.
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: false }] });
    // QEMU 7.2 caps migration at 32 MiB/s by default.
    await (qmp.execute as (command: string, args: object) => Promise<unknown>)('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 * MIB });
    await qmp.execute('migrate', { uri: `unix:/${SNAPSHOT_SOCKET_NAME}` });
    for (;;) {
      const info = await qmp.execute('query-migrate');
      if (info.status === 'completed') break;
      if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`raw migration ${info.status}: ${info['error-desc'] ?? ''}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    await receiver.written(60_000);
  } finally {
    await receiver.close();
    qmp.close();
  }
  return { bytes: (await stat(destination)).size, ms: performance.now() - started };
}

async function main(): Promise<void> {
  // A detached VM's exit is only seen through its (unref'd) child process: keep the loop alive until the end.
  const keepAlive = setInterval(() => undefined, 60_000);
  const workDir = await mkdtemp('/tmp/kbpr-');
  const { pool, layers, config, templates, probe, driver, snapshots } = vmLayerForBench({ slotPrefix: 'kbpr', slotCidr: '10.222.0.0/24', workDir, bootTimeoutMs: 180_000 });
  const store = new CheckpointStore(join(workDir, 'checkpoints'));
  const cgroups = new VmCgroups(VmCgroupsConfig.fromEnv());
  const qemuVersion = parseQemuVersion(await readQemuVersionLine(config.qemuBinary))!;
  const tscKhz = await hostTscKhz();
  const live = new Set<VmHandle>();
  const rawChildren = new Map<ChildProcess, string>();
  const privateTemplates: string[] = [];
  let n = 0;

  const startClone = async (snapshot: TemplateSnapshot, prefix: string): Promise<Clone> => {
    const id = `${prefix}${n++}`;
    const slot = await pool.acquire();
    const layer = await layers.createLayer(id, snapshot.disk, workDir);
    const options = benchCloneOptions(workDir, id, slot, layer);
    const vm = await snapshots.restore(snapshot, options);
    live.add(vm);
    await waitForGuestAgent(slot.hostAddress, snapshot.build.agentPort, AGENT_WAIT);
    return { vm, spec: snapshots.cloneSpec(snapshot, options), slot, layer };
  };
  const killVm = async (vm: VmHandle) => {
    await vm.kill();
    live.delete(vm);
  };

  /** Kiln's resume of a checkpoint: VMM up while the artifacts are verified, then pages written back and device state loaded, then run. */
  const kilnRestore = async (snapshot: TemplateSnapshot, dir: string, manifest: CheckpointManifest, id: string, slot: NetworkSlot, layer: RootfsLayer) => {
    const spec = snapshots.cloneSpec(snapshot, benchCloneOptions(workDir, id, slot, layer));
    const started = performance.now();
    const since = (t: number) => () => performance.now() - t;
    const [prepared, verifyMs] = await Promise.all([
      driver.prepareRestore(spec, checkpointRef(dir), { startPaused: true }).then((p) => ({ p, ms: since(started)() })),
      store.verify(dir, manifest).then(since(started)),
    ]);
    live.add(prepared.p.handle);
    const t1 = performance.now();
    const vm = await prepared.p.start();
    const startMs = performance.now() - t1;
    await vm.resume();
    const runningMs = performance.now() - started;
    await waitForGuestAgent(slot.hostAddress, snapshot.build.agentPort, AGENT_WAIT);
    return { vm, runningMs, agentMs: performance.now() - started, prepareMs: prepared.ms, verifyMs, startMs, spawnToQmpMs: vm.startTimings?.controlReadyMs ?? NaN };
  };

  /**
   * QEMU restoring the VM's full state by itself: the clone's command line (same devices, same RAM block id) with guest
   * RAM anonymous instead of the template file, fed the migration stream on fd 3 (-incoming fd:3), as root, in the
   * slot's netns and in a cgroup with the same limits as the driver's VMs.
   */
  const rawRestore = async (spec: VmSpec, migrationFile: string, slot: NetworkSlot, agentPort: number) => {
    await mkdir(spec.stateDir, { recursive: true });
    const qmpSocketPath = join(spec.stateDir, 'qmp.sock');
    await rm(qmpSocketPath, { force: true });
    const args = buildQemuArgs(spec, {
      qemuVersion,
      accelerator: spec.accelerator ?? 'tcg',
      tcgTranslationBufferMib: config.tcgTranslationBufferMib,
      qmpSocketPath,
      pidFilePath: join(spec.stateDir, 'qemu.pid'),
      tcgGuestTscKhz: spec.accelerator === 'kvm' ? undefined : tscKhz,
    });
    const backend = args.findIndex((arg) => arg.startsWith('memory-backend-file,'));
    if (backend < 0) throw new Error('no memory backend in the clone command line');
    args[backend] = `memory-backend-ram,id=ram,size=${spec.memoryMib}M`;
    args.push('-incoming', 'fd:3');
    const placement = await cgroups.prepare(spec.id, { vcpus: spec.vcpus, memoryMib: spec.memoryMib, accelerator: spec.accelerator ?? 'tcg' });
    const logFd = openSync(join(spec.stateDir, 'qemu.log'), 'a');
    const streamFd = openSync(migrationFile, 'r');
    const started = performance.now();
    const child = spawn('nsenter', [`--net=${spec.network!.netnsPath}`, '--', config.qemuBinary, ...args], { detached: true, stdio: ['ignore', logFd, logFd, streamFd] });
    closeSync(logFd);
    closeSync(streamFd);
    rawChildren.set(child, spec.id);
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    if (placement && child.pid) placement.enterSync(child.pid);
    const kill = async () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
      await exited;
      rawChildren.delete(child);
      await cgroups.release(spec.id, child.pid);
    };
    try {
      const qmp = await QmpClient.connect(qmpSocketPath, 30_000);
      try {
        for (;;) {
          const { status } = await qmp.execute('query-status');
          if (status === 'running') break;
          // A stream from a stopped VM comes back stopped (as in the driver's restore): run it.
          if (status === 'paused') await qmp.execute('cont');
          else if (status !== 'inmigrate' && status !== 'prelaunch') throw new Error(`raw restore ended in ${status}`);
          await new Promise((r) => setTimeout(r, 1));
        }
      } finally {
        qmp.close();
      }
      const runningMs = performance.now() - started;
      await waitForGuestAgent(slot.hostAddress, agentPort, AGENT_WAIT);
      return { pid: child.pid!, runningMs, agentMs: performance.now() - started, kill };
    } catch (error) {
      await kill();
      throw error;
    }
  };

  let cleanedUp: Promise<void> | undefined;
  const cleanUp = () =>
    (cleanedUp ??= (async () => {
      for (const vm of live) await vm.kill().catch(() => undefined);
      for (const [child, id] of rawChildren) {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          /* gone */
        }
        await cgroups.release(id, child.pid).catch(() => undefined);
      }
      await pool.destroyAll().catch(() => undefined);
      for (const dir of privateTemplates) await rm(dir, { recursive: true, force: true });
      await rm(workDir, { recursive: true, force: true });
      clearInterval(keepAlive);
    })());
  // Interrupted: still remove the VMs, slots and private templates.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      console.error(`${signal}: cleaning up`);
      void cleanUp().finally(() => process.exit(130));
    });
  }
  try {
    await pool.init();
    const accel = await probe.report();
    console.log(`accelerator: ${accel.accelerator} (${accel.source}: ${accel.detail}); TCG tb-size ${config.tcgTranslationBufferMib} MiB; ${new Date().toISOString()}`);
    console.log(`iterations per size: ${ITERATIONS} (a fresh clone per iteration), guest write ${WRITE_MIB} MiB, forks ${FORK_COUNTS.join(',')}`);

    const base = await templates.resolve('base');
    const snapshotOf = async (memoryMib: number): Promise<TemplateSnapshot> => {
      let name = 'base';
      if (memoryMib !== base.memoryMib) {
        name = `kbpr-${memoryMib}m-${process.pid}`;
        privateTemplates.push(await registerSizedTemplate(templates, name, memoryMib));
      }
      const t0 = performance.now();
      const snapshot = await snapshots.ensure(name);
      console.log(`template ${name} (${memoryMib} MiB): snapshot ready in ${(performance.now() - t0).toFixed(0)} ms`);
      return snapshot;
    };

    const ratios: string[] = [];
    for (const memoryMib of SIZES_MIB) {
      const snapshot = await snapshotOf(memoryMib);
      const port = snapshot.build.agentPort;
      console.log(`\n== ${memoryMib} MiB: write ${WRITE_MIB} MiB in the guest, pause (checkpoint + kill), resume; raw QEMU restore of the same state ==`);
      const s = {
        checkpoint: [] as number[], stop: [] as number[], deviceState: [] as number[], memory: [] as number[], sync: [] as number[],
        kill: [] as number[], pause: [] as number[], seal: [] as number[], pauseSealed: [] as number[],
        pagesBytes: [] as number[], stateBytes: [] as number[], totalBytes: [] as number[], rawBytes: [] as number[], rawSaveMs: [] as number[],
        kilnRunning: [] as number[], kilnAgent: [] as number[], rawRunning: [] as number[], rawAgent: [] as number[], ratioAgent: [] as number[], ratioRunning: [] as number[],
        kilnPss: [] as number[], rawPss: [] as number[], runs: [] as number[], kilnSpawn: [] as number[], kilnPrepare: [] as number[], kilnVerify: [] as number[], kilnStart: [] as number[],
      };
      for (let i = 0; i < ITERATIONS; i++) {
        const clone = await startClone(snapshot, `kbpr${memoryMib}-`);
        const written = await guestRun(clone.slot, port, `head -c ${WRITE_MIB}M /dev/urandom > /dev/shm/kbpr-data && echo ok`);
        if (!written.includes('ok')) throw new Error(`guest write failed: ${written}`);
        const dir = join(workDir, `${clone.spec.id}-ckpt`);
        await mkdir(dir);

        const t0 = performance.now();
        const checkpoint = await clone.vm.checkpoint(dir);
        const checkpointMs = performance.now() - t0;
        const t1 = performance.now();
        const sealed = await store.seal(dir, manifestOf(clone.spec.id, 'pause', snapshot, clone.spec), checkpointFiles(checkpoint));
        const sealMs = performance.now() - t1;
        // Not part of the pause: the baseline's input, taken while the VM is still stopped in the checkpointed state.
        clone.vm.detach();
        const raw = await migrateFullState(clone.spec.stateDir, join(dir, 'raw-migration'));
        const t2 = performance.now();
        await killVm(clone.vm);
        const killMs = performance.now() - t2;
        // The raw restore gets its own copy of the disk as it was at the pause (Kiln's resume runs on the layer).
        const rawDisk = join(workDir, `${clone.spec.id}-raw-rootfs.qcow2`);
        await copyFile(clone.layer.path, rawDisk);

        s.checkpoint.push(checkpointMs);
        s.stop.push(checkpoint.timings.stopMs);
        s.deviceState.push(checkpoint.timings.deviceStateMs);
        s.memory.push(checkpoint.timings.memoryMs);
        s.sync.push(checkpoint.timings.syncMs);
        s.kill.push(killMs);
        s.pause.push(checkpointMs + killMs);
        s.seal.push(sealMs);
        s.pauseSealed.push(checkpointMs + sealMs + killMs);
        s.pagesBytes.push(checkpoint.changedMemory.bytes);
        s.stateBytes.push(checkpoint.stateBytes);
        s.totalBytes.push(checkpoint.changedMemory.bytes + checkpoint.changedMemory.indexBytes + checkpoint.stateBytes);
        s.rawBytes.push(raw.bytes);
        s.rawSaveMs.push(raw.ms);

        const runKiln = async () => {
          const resumed = await kilnRestore(snapshot, dir, sealed.manifest, `${clone.spec.id}k`, clone.slot, clone.layer);
          s.kilnPss.push((await memoryUsage(resumed.vm.pid)).pss);
          await killVm(resumed.vm);
          return resumed;
        };
        const runRaw = async () => {
          const spec: VmSpec = { ...clone.spec, id: `${clone.spec.id}r`, stateDir: join(workDir, `${clone.spec.id}r`), serialLogPath: join(workDir, `${clone.spec.id}r.log`), rootDisk: { path: rawDisk, format: 'qcow2' } };
          const restored = await rawRestore(spec, join(dir, 'raw-migration'), clone.slot, port);
          s.rawPss.push((await memoryUsage(restored.pid)).pss);
          await restored.kill();
          return restored;
        };
        // Alternate which goes first: the second finds the host's caches warmer.
        let kiln: Awaited<ReturnType<typeof runKiln>>;
        let raw2: Awaited<ReturnType<typeof runRaw>>;
        if (i % 2 === 0) {
          kiln = await runKiln();
          raw2 = await runRaw();
        } else {
          raw2 = await runRaw();
          kiln = await runKiln();
        }
        s.kilnPrepare.push(kiln.prepareMs);
        s.kilnSpawn.push(kiln.spawnToQmpMs);
        s.kilnVerify.push(kiln.verifyMs);
        s.kilnStart.push(kiln.startMs);
        s.runs.push(checkpoint.changedMemory.runs);
        s.kilnRunning.push(kiln.runningMs);
        s.kilnAgent.push(kiln.agentMs);
        s.rawRunning.push(raw2.runningMs);
        s.rawAgent.push(raw2.agentMs);
        s.ratioRunning.push(kiln.runningMs / raw2.runningMs);
        s.ratioAgent.push(kiln.agentMs / raw2.agentMs);
        console.log(
          `  #${i}: pause ${(checkpointMs + killMs).toFixed(0)} ms (checkpoint ${checkpointMs.toFixed(0)}, kill ${killMs.toFixed(0)}, seal +${sealMs.toFixed(0)}), ` +
            `${mib(checkpoint.changedMemory.bytes)} pages + ${checkpoint.stateBytes} B state; resume ${kiln.runningMs.toFixed(0)}/${kiln.agentMs.toFixed(0)} ms ` +
            `vs raw ${raw2.runningMs.toFixed(0)}/${raw2.agentMs.toFixed(0)} ms (running/agent); raw stream ${mib(raw.bytes)}`,
        );
        await layers.removeLayer(clone.layer);
        await rm(rawDisk, { force: true });
        await rm(dir, { recursive: true, force: true });
        await pool.release(clone.slot);
      }
      report(`pause (driver): checkpoint + kill`, s.pause);
      report(`  checkpoint(): stop -> all written (wall)`, s.checkpoint);
      report(`    stop`, s.stop);
      report(`    device state (xen-save-devices-state)`, s.deviceState);
      report(`    changed pages (pagemap + /proc/pid/mem + sha256)`, s.memory);
      report(`    fsync`, s.sync);
      report(`  kill of the VMM`, s.kill);
      report(`  CheckpointStore.seal (agent, after checkpoint)`, s.seal);
      report(`pause incl. seal: checkpoint + seal + kill`, s.pauseSealed);
      report(`bytes written per pause (pages + index + device state)`, s.totalBytes.map((b) => b / MIB), { unit: 'MiB' });
      report(`  of which changed guest pages`, s.pagesBytes.map((b) => b / MIB), { unit: 'MiB' });
      report(`  of which device state`, s.stateBytes.map((b) => b / 1024), { unit: 'KiB' });
      report(`  runs of changed pages in the index`, s.runs, { unit: 'runs', digits: 0 });
      report(`raw baseline: QEMU migration stream (RAM + devices)`, s.rawBytes.map((b) => b / MIB), { unit: 'MiB' });
      report(`raw baseline: time to write it (not a pause path)`, s.rawSaveMs);
      report(`resume (Kiln): call -> guest running`, s.kilnRunning);
      report(`resume (Kiln): call -> agent GET /health 204`, s.kilnAgent);
      report(`  prepareRestore (call -> VMM waiting for its state)`, s.kilnPrepare);
      report(`    of which QEMU spawn -> QMP ready`, s.kilnSpawn);
      report(`  CheckpointStore.verify (sha256, beside prepareRestore)`, s.kilnVerify);
      report(`  start() (changed pages written back + device state)`, s.kilnStart);
      report(`raw QEMU restore: spawn -> guest running`, s.rawRunning);
      report(`raw QEMU restore: spawn -> agent GET /health 204`, s.rawAgent);
      report(`ratio resume/raw, to running (per iteration)`, s.ratioRunning, { unit: 'x', digits: 2 });
      report(`ratio resume/raw, to agent (per iteration)`, s.ratioAgent, { unit: 'x', digits: 2 });
      report(`PSS after resume (Kiln), at agent answer`, s.kilnPss, { unit: 'MiB' });
      report(`PSS after raw restore, at agent answer`, s.rawPss, { unit: 'MiB' });
      ratios.push(
        `${memoryMib} MiB: pause p50 ${p50(s.pause).toFixed(0)} ms (with seal ${p50(s.pauseSealed).toFixed(0)} ms), ${p50(s.totalBytes.map((b) => b / MIB)).toFixed(1)} MiB written; ` +
          `resume/raw p50 ${(p50(s.kilnAgent) / p50(s.rawAgent)).toFixed(2)}x to agent, ${(p50(s.kilnRunning) / p50(s.rawRunning)).toFixed(2)}x to running`,
      );
    }

    if (FORK_COUNTS.length > 0) {
      const snapshot = await snapshotOf(FORK_SOURCE_MIB);
      const port = snapshot.build.agentPort;
      console.log(`\n== fork from a ${FORK_SOURCE_MIB} MiB source that wrote ${WRITE_MIB} MiB: checkpoint in place, then restore the forks, four at a time ==`);
      const source = await startClone(snapshot, 'kbprsrc');
      const written = await guestRun(source.slot, port, `head -c ${WRITE_MIB}M /dev/urandom > /dev/shm/kbpr-data && echo ok`);
      if (!written.includes('ok')) throw new Error(`guest write failed: ${written}`);
      const dir = join(workDir, 'fork-ckpt');
      await mkdir(dir);
      // As SandboxManager.checkpointInPlace: stopped while state, pages and a copy of the disk layer are written.
      const t0 = performance.now();
      const checkpoint = await source.vm.checkpoint(dir);
      await copyFile(source.layer.path, join(dir, CHECKPOINT_FILES.disk));
      await source.vm.resume();
      const stoppedMs = performance.now() - t0;
      const t1 = performance.now();
      const sealed = await store.seal(dir, manifestOf('fork', 'fork', snapshot, source.spec), { ...checkpointFiles(checkpoint), [CHECKPOINT_FILES.disk]: {} });
      const sealMs = performance.now() - t1;
      console.log(
        `source stopped ${stoppedMs.toFixed(0)} ms (checkpoint ${checkpoint.durationMs.toFixed(0)} ms + layer copy + cont), seal ${sealMs.toFixed(0)} ms; ` +
          `${mib(checkpoint.changedMemory.bytes)} pages, ${checkpoint.stateBytes} B state`,
      );
      const summary: string[] = [];
      for (const count of FORK_COUNTS) {
        const forks: Array<Clone & { runningMs: number; agentMs: number; layerMs: number; prepareMs: number; spawnMs: number; verifyMs: number; startMs: number; ownRunningMs: number; ownAgentMs: number }> = [];
        // Slots come from the agent's warm pool; provisioning a netns is not part of a fork, so they are taken first.
        const slots: NetworkSlot[] = [];
        for (let i = 0; i < count; i++) slots.push(await pool.acquire());
        const started = performance.now();
        try {
          // Four at a time, as SandboxManager.fork starts them (FORK_CONCURRENCY): their waits overlap.
          let next = 0;
          const startFork = async (i: number) => {
            const id = `kbprf${count}-${i}`;
            const slot = slots[i];
            const layerStarted = performance.now();
            const layer = await layers.createLayer(id, { path: join(dir, CHECKPOINT_FILES.disk), format: 'qcow2' }, workDir);
            const layerMs = performance.now() - layerStarted;
            const restored = await kilnRestore(snapshot, dir, sealed.manifest, id, slot, layer);
            forks.push({
              vm: restored.vm,
              spec: restored.vm.spec,
              slot,
              layer,
              runningMs: performance.now() - started - (restored.agentMs - restored.runningMs),
              agentMs: performance.now() - started,
              layerMs,
              prepareMs: restored.prepareMs,
              spawnMs: restored.spawnToQmpMs,
              verifyMs: restored.verifyMs,
              startMs: restored.startMs,
              ownRunningMs: restored.runningMs,
              ownAgentMs: restored.agentMs,
            });
          };
          await Promise.all(
            Array.from({ length: Math.min(FORK_CONCURRENCY, count) }, async () => {
              for (let i = next++; i < count; i = next++) await startFork(i);
            }),
          );
          forks.sort((x, y) => x.agentMs - y.agentMs);
          slots.splice(0, forks.length);
          const allMs = performance.now() - started;
          await new Promise((r) => setTimeout(r, IDLE_MS));
          const usages = await Promise.all(forks.map((f) => memoryUsage(f.vm.pid)));
          console.log(
            `\nfork of ${count}: last fork running ${forks[forks.length - 1].runningMs.toFixed(0)} ms, all ${count} agents answering ${allMs.toFixed(0)} ms after the first layer/restore began ` +
              `(+ source stop ${stoppedMs.toFixed(0)} ms + seal ${sealMs.toFixed(0)} ms before)`,
          );
          report(`  fork of ${count}: first restore start -> this fork running`, forks.map((f) => f.runningMs));
          report(`  fork of ${count}: first restore start -> this fork's agent answers`, forks.map((f) => f.agentMs));
          report(`    per fork: disk layer (qemu-img create over the checkpoint's disk copy)`, forks.map((f) => f.layerMs));
          report(`    per fork: restore call -> running`, forks.map((f) => f.ownRunningMs));
          report(`      prepareRestore (call -> VMM waiting for its state)`, forks.map((f) => f.prepareMs));
          report(`        of which QEMU spawn -> QMP ready`, forks.map((f) => f.spawnMs));
          report(`      CheckpointStore.verify (hashes once, then cached)`, forks.map((f) => f.verifyMs));
          report(`      start() (pages written back + device state)`, forks.map((f) => f.startMs));
          report(`    per fork: restore call -> agent answers`, forks.map((f) => f.ownAgentMs));
          report(`  fork of ${count}: PSS per fork (RAM ${FORK_SOURCE_MIB} MiB)`, usages.map((u) => u.pss), { unit: 'MiB' });
          report(`    Pss_Anon`, usages.map((u) => u.pssAnon), { unit: 'MiB' });
          report(`    Pss_File`, usages.map((u) => u.pssFile), { unit: 'MiB' });
          report(`    RSS`, usages.map((u) => u.rss), { unit: 'MiB' });
          summary.push(
            `fork of ${count}: all running ${forks[forks.length - 1].runningMs.toFixed(0)} ms, all agents answering ${allMs.toFixed(0)} ms ` +
              `(with source stop + seal ${(allMs + stoppedMs + sealMs).toFixed(0)} ms), ` +
              `PSS per fork p50 ${p50(usages.map((u) => u.pss)).toFixed(1)} MiB = ${((100 * p50(usages.map((u) => u.pss))) / FORK_SOURCE_MIB).toFixed(1)}% of its RAM`,
          );
        } finally {
          for (const f of forks) {
            await killVm(f.vm);
            await layers.removeLayer(f.layer);
            await pool.release(f.slot);
          }
          for (const slot of slots) await pool.release(slot);
        }
      }
      const sourceUsage = await memoryUsage(source.vm.pid);
      console.log(`source PSS after the forks: ${sourceUsage.pss.toFixed(1)} MiB (Pss_Anon ${sourceUsage.pssAnon.toFixed(1)})`);
      await killVm(source.vm);
      await layers.removeLayer(source.layer);
      await pool.release(source.slot);
      ratios.push(...summary);
    }

    console.log('\n== summary ==');
    for (const line of ratios) console.log(line);
  } finally {
    await cleanUp();
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
