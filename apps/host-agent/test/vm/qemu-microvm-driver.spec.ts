import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { release } from 'node:os';
import { join, resolve } from 'node:path';
import { type NetworkSlot } from '../../src/network';
import { coldBootSpec } from '../../src/template';
import { guestAgentHealthy, waitForGuestAgent } from '../../src/guest-agent-client';
import { QemuMicrovmDriver, VmAdoptError, VmNotRunningError, InvalidVmSpecError, type VmHandle, type VmSpec } from '../../src/vmm';
import { processStartTicks } from '../../src/vmm/qemu-microvm.driver';
import { Cleanup, readText, startVmTestApp, type VmTestApp } from './vm-test-context';
import { bundleOwner } from '../support/owner-process';

// One cold-booted VM carries the whole lifecycle (boot, pause, adopt, kill -9): under TCG a
// boot costs ~8 s of both cores, so the steps share it and run in order.
describe('QEMU microvm driver (real TCG VM, base template)', () => {
  let ctx: VmTestApp;
  const cleanup = new Cleanup();
  let slot: NetworkSlot;
  let spec: VmSpec;
  let vm: VmHandle;
  let agentPort: number;

  beforeAll(async () => {
    ctx = await startVmTestApp();
    const base = await ctx.templates.resolve('base');
    agentPort = base.agentPort;
    slot = await ctx.acquireSlot(cleanup);
    const layer = await ctx.layers.createLayer('ktvm-driver', base.rootfs, ctx.workDir);
    spec = coldBootSpec(base, {
      id: 'ktvm-driver',
      rootDisk: { path: layer.path, format: layer.format },
      slot,
      stateDir: join(ctx.workDir, 'driver-vm'),
      serialLogPath: join(ctx.workDir, 'driver-vm.serial.log'),
    });
  });

  afterAll(async () => {
    try {
      await cleanup.run();
    } finally {
      await ctx?.close();
    }
  });

  it('rejects a spec with a bad MAC before starting anything', async () => {
    const bad = { ...spec, id: 'ktvm-bad', network: { ...spec.network!, guestMac: 'not-a-mac' } };
    await expect(ctx.driver.spawn(bad)).rejects.toBeInstanceOf(InvalidVmSpecError);
  });

  it('cold-boots the base template until the guest agent answers /health with 204', async () => {
    vm = cleanup.vm(await ctx.driver.spawn(spec));
    expect(await vm.state()).toBe('running');
    await waitForGuestAgent(slot.hostAddress, agentPort, { timeoutMs: 90_000 });
    // The guest runs the image's own kernel, not the host's.
    const serial = await readText(spec.serialLogPath);
    const match = /kiln-init: kernel (\S+)/.exec(serial);
    expect(match?.[1]).toBe((await ctx.templates.resolve('base')).kernelRelease);
    expect(match?.[1]).not.toBe(release());
  });

  it('pauses and continues the guest', async () => {
    await vm.pause();
    expect(await vm.state()).toBe('paused');
    // A paused guest cannot answer, so the request runs into its timeout.
    expect(await guestAgentHealthy(slot.hostAddress, agentPort, 1_000)).toBe(false);
    await vm.resume();
    expect(await vm.state()).toBe('running');
    await waitForGuestAgent(slot.hostAddress, agentPort, { timeoutMs: 10_000 });
  });

  it('is adopted from its state dir by a fresh driver instance after the old one lets go', async () => {
    vm.detach();
    expect(vm.hasExited).toBe(false);
    const freshDriver = new QemuMicrovmDriver(ctx.config, ctx.probe);
    const adopted = cleanup.vm(await freshDriver.adopt(spec.stateDir));
    expect(adopted.pid).toBe(vm.pid);
    expect(adopted.spec.id).toBe(spec.id);
    expect(await adopted.state()).toBe('running');
    await waitForGuestAgent(slot.hostAddress, agentPort, { timeoutMs: 10_000 });
    vm = adopted;
  });

  it('notices at once when qemu is killed with SIGKILL, and a command caught by the death reports the exit', async () => {
    // Stopped, QEMU cannot read the command: the kill closes its socket with the command still waiting.
    process.kill(vm.pid, 'SIGSTOP');
    const caught = vm.state().then(
      () => 'answered',
      (error: unknown) => error,
    );
    await new Promise((r) => setTimeout(r, 50));
    const killedAt = Date.now();
    process.kill(vm.pid, 'SIGKILL');
    const error = await caught;
    expect(error).toBeInstanceOf(VmNotRunningError);
    expect(vm.hasExited).toBe(true);
    const exit = await vm.exited;
    expect(Date.now() - killedAt).toBeLessThan(2_000);
    expect(vm.hasExited).toBe(true);
    expect(exit.reason).toMatch(/control-socket-closed|process-gone|process-exit/);
    await expect(vm.pause()).rejects.toThrow(/has exited/);
  });

  it('keeps a VM running when the process that started it is killed, and adopts it afterwards', async () => {
    // The owner is a separate Node process (the agent's stand-in).
    const ownerBundle = join(ctx.workDir, 'vm-owner.js');
    await bundleOwner(join(__dirname, 'vm-owner-process.ts'), ownerBundle);
    const base = await ctx.templates.resolve('base');
    const layer = await ctx.layers.createLayer('ktvm-orphan', base.rootfs, ctx.workDir);
    const orphanSpec: VmSpec = {
      ...spec,
      id: 'ktvm-orphan',
      network: undefined,
      rootDisk: { path: layer.path, format: layer.format },
      stateDir: join(ctx.workDir, 'orphan-vm'),
      serialLogPath: join(ctx.workDir, 'orphan-vm.serial.log'),
      accelerator: 'tcg',
    };
    const owner = spawn(process.execPath, [ownerBundle, JSON.stringify(orphanSpec)], {
      env: { ...process.env, NODE_PATH: resolve(__dirname, '../../../../node_modules') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const ownerExited = new Promise((r) => owner.once('exit', r));
    cleanup.add(async () => {
      owner.kill('SIGKILL');
      await ownerExited;
    });
    let stderr = '';
    owner.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const pid = await new Promise<number>((resolvePid, reject) => {
      let stdout = '';
      owner.stdout.setEncoding('utf8').on('data', (chunk: string) => {
        stdout += chunk;
        const match = /STARTED (\d+)/.exec(stdout);
        if (match) resolvePid(Number(match[1]));
      });
      owner.once('exit', (code) => reject(new Error(`VM owner exited with ${code}: ${stderr}`)));
    });
    cleanup.add(async () => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    });

    owner.kill('SIGKILL');
    await ownerExited;
    await new Promise((r) => setTimeout(r, 200));
    expect(await processStartTicks(pid)).toBeDefined();
    // Its uid stays leased to it, not to the process that started it and is gone.
    const vmmUid = Number(/^Uid:\s+(\d+)/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1]);
    const leasePath = join(ctx.config.dataDir, 'vmm', 'uid-leases', String(vmmUid));
    expect(JSON.parse(await readFile(leasePath, 'utf8'))).toMatchObject({ vmId: 'ktvm-orphan', pid });

    const adopted = await new QemuMicrovmDriver(ctx.config, ctx.probe).adopt(orphanSpec.stateDir);
    expect(adopted.pid).toBe(pid);
    expect(await adopted.state()).toBe('paused');
    await adopted.resume();
    expect(await adopted.state()).toBe('running');
    const exit = await adopted.stop();
    expect(exit.reason).toMatch(/control-socket-closed|process-gone/);
    expect(await processStartTicks(pid)).toBeUndefined();
    // The adopting driver ends the lease with the VMM (right after `exited` settles).
    const leaseGone = async () => (await readFile(leasePath, 'utf8').then(() => false, () => true));
    for (let waited = 0; waited < 2_000 && !(await leaseGone()); waited += 50) await new Promise((r) => setTimeout(r, 50));
    expect(await leaseGone()).toBe(true);
  });

  it('refuses to adopt a state dir whose VM is gone', async () => {
    await expect(new QemuMicrovmDriver(ctx.config, ctx.probe).adopt(spec.stateDir)).rejects.toBeInstanceOf(VmAdoptError);
  });
});
