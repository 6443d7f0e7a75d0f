import { randomBytes } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { Agent } from 'node:http';
import { join } from 'node:path';
import { createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Filesystem } from '@kiln/proto/filesystem';
import { Process } from '@kiln/proto/process';
import { initGuestAgent, waitForGuestAgent } from '../../src/guest-agent-client';
import { sha256File, SnapshotIntegrityError, TemplateSnapshots, type TemplateSnapshot } from '../../src/snapshot';
import type { TemplateBuild } from '../../src/template';
import { VmStartError, type VmHandle } from '../../src/vmm';
import { processStartTicks } from '../../src/vmm/qemu-microvm.driver';
import { Cleanup, registerTestTemplate, startVmTestApp, type VmTestApp } from './vm-test-context';

describe('template snapshot and clone restore (real TCG VMs)', () => {
  let ctx: VmTestApp;
  const cleanup = new Cleanup();
  let build: TemplateBuild;
  let snapshot: TemplateSnapshot;

  beforeAll(async () => {
    ctx = await startVmTestApp();
    // A private copy of `base` (hard links), so the real base snapshot is never touched.
    build = await registerTestTemplate(ctx.templates, 'ktvm-snap', cleanup);
  });

  afterAll(async () => {
    try {
      await cleanup.run();
    } finally {
      await ctx?.close();
    }
  });

  it('creates the snapshot once: boot, agent health, x-ignore-shared save, manifest with sha256 sidecars', async () => {
    snapshot = await ctx.snapshots.ensure('ktvm-snap');
    expect(snapshot.dir).toBe(build.snapshotDir);
    const manifest = JSON.parse(await readFile(join(snapshot.dir, 'manifest.json'), 'utf8'));
    expect(manifest.memoryMib).toBe(build.memoryMib);
    for (const name of ['memory', 'disk.qcow2', 'state']) {
      const sidecar = (await readFile(join(snapshot.dir, `${name}.sha256`), 'utf8')).split(/\s+/)[0];
      expect(sidecar).toBe(manifest.files[name].sha256);
      expect((await stat(join(snapshot.dir, name))).size).toBe(manifest.files[name].bytes);
    }
    // x-ignore-shared: guest RAM stays in the memory file, the state file is device state only.
    expect(manifest.files.state.bytes).toBeLessThan(1 << 20);
    expect(manifest.files.memory.bytes).toBe(build.memoryMib * 1024 * 1024);

    const again = await ctx.snapshots.ensure('ktvm-snap');
    expect(again.manifest.createdAt).toBe(snapshot.manifest.createdAt);
  });

  it('restores two clones concurrently (one plain, one prepared); both agents answer and the template files stay byte-identical', async () => {
    const memoryBefore = snapshot.manifest.files.memory.sha256;
    const diskBefore = snapshot.manifest.files['disk.qcow2'].sha256;
    const baseBefore = await sha256File(build.rootfs.path);

    const clones = await Promise.all(
      ['ktvm-clone-a', 'ktvm-clone-b'].map(async (id) => {
        const slot = await ctx.acquireSlot(cleanup);
        const layer = await ctx.layers.createLayer(id, snapshot.disk, ctx.workDir);
        cleanup.add(() => ctx.layers.removeLayer(layer));
        return { id, slot, layer };
      }),
    );
    const cloneOptions = ({ id, slot, layer }: (typeof clones)[number]) => ({
      id,
      stateDir: join(ctx.workDir, id),
      serialLogPath: join(ctx.workDir, `${id}.serial.log`),
      rootDisk: { path: layer.path, format: layer.format },
      network: { netnsPath: slot.netnsPath, tapName: slot.tapName, guestMac: slot.guestMac },
    });
    // Clone b's VMM is started ahead (prepared restore) and waits for the snapshot.
    const prepared = await ctx.snapshots.prepareClone(snapshot, cloneOptions(clones[1]));
    cleanup.vm(prepared.handle);
    expect(await prepared.handle.state()).toBe('restoring');
    const handles: VmHandle[] = await Promise.all([
      ctx.snapshots.restore(snapshot, cloneOptions(clones[0])).then((vm) => cleanup.vm(vm)),
      prepared.start(),
    ]);
    for (const vm of handles) expect(await vm.state()).toBe('running');
    await Promise.all(clones.map(({ slot }) => waitForGuestAgent(slot.hostAddress, build.agentPort, { timeoutMs: 30_000 })));

    // Guests ran and wrote memory and disk; none of it may reach the template's files.
    await Promise.all(handles.map((vm) => vm.stop()));
    expect(await sha256File(snapshot.memoryPath)).toBe(memoryBefore);
    expect(await sha256File(snapshot.disk.path)).toBe(diskBefore);
    expect(await sha256File(build.rootfs.path)).toBe(baseBefore);
  });

  it('a clone given the resolvers the template wrote keeps its resolv.conf (no write on the create path); others replace it', async () => {
    const templateResolvers = snapshot.manifest.guestNameservers;
    expect(templateResolvers.length).toBeGreaterThan(0);
    const resolvConfAfterInit = async (id: string, nameservers: string[]) => {
      const slot = await ctx.acquireSlot(cleanup);
      const layer = await ctx.layers.createLayer(id, snapshot.disk, ctx.workDir);
      cleanup.add(() => ctx.layers.removeLayer(layer));
      const restoredAt = Date.now();
      const vm = cleanup.vm(
        await ctx.snapshots.restore(snapshot, {
          id,
          stateDir: join(ctx.workDir, id),
          serialLogPath: join(ctx.workDir, `${id}.serial.log`),
          rootDisk: { path: layer.path, format: layer.format },
          network: { netnsPath: slot.netnsPath, tapName: slot.tapName, guestMac: slot.guestMac },
        }),
      );
      const connections = new Agent({ keepAlive: true });
      try {
        // As a create sends it: the clock first, so a rewrite gets the host's time.
        await initGuestAgent(slot.hostAddress, connections, { timestamp: new Date().toISOString(), nameservers }, 60_000, { port: build.agentPort });
        const transport = createConnectTransport({ baseUrl: `http://${slot.hostAddress}:${build.agentPort}`, httpVersion: '1.1' });
        const { entry } = await createClient(Filesystem, transport).stat({ path: '/etc/resolv.conf' }, { timeoutMs: 30_000 });
        let content = '';
        for await (const response of createClient(Process, transport).start({ process: { cmd: '/bin/cat', args: ['/etc/resolv.conf'], envs: {} } }, { timeoutMs: 30_000 })) {
          const event = response.event?.event;
          if (event?.case === 'data' && event.value.output.case === 'stdout') content += Buffer.from(event.value.output.value).toString();
        }
        return { restoredAt, modifiedAtMs: Number(entry!.modifiedTime!.seconds) * 1000, resolvers: [...content.matchAll(/^nameserver (\S+)$/gm)].map((m) => m[1]) };
      } finally {
        connections.destroy();
        await vm.stop();
      }
    };

    const same = await resolvConfAfterInit('ktvm-dns-same', templateResolvers);
    expect(same.resolvers).toEqual(templateResolvers);
    // Still the file the template wrote before its memory was saved.
    expect(same.modifiedAtMs).toBeLessThan(same.restoredAt);

    const other = await resolvConfAfterInit('ktvm-dns-other', ['192.0.2.53']);
    expect(other.resolvers).toEqual(['192.0.2.53']);
    // Whole seconds, and the guest clock is the host's to within a request's latency.
    expect(other.modifiedAtMs).toBeGreaterThanOrEqual(other.restoredAt - 2_000);
  });

  it('fails a restore from a corrupt state file with VmStartError and leaves no VMM behind', async () => {
    const garbage = join(ctx.workDir, 'garbage-state');
    await writeFile(garbage, randomBytes(64 * 1024));
    const slot = await ctx.acquireSlot(cleanup);
    const layer = await ctx.layers.createLayer('ktvm-corrupt', snapshot.disk, ctx.workDir);
    const spec = ctx.snapshots.cloneSpec(snapshot, {
      id: 'ktvm-corrupt',
      stateDir: join(ctx.workDir, 'ktvm-corrupt'),
      serialLogPath: join(ctx.workDir, 'ktvm-corrupt.serial.log'),
      rootDisk: { path: layer.path, format: layer.format },
      network: { netnsPath: slot.netnsPath, tapName: slot.tapName, guestMac: slot.guestMac },
    });
    const prepared = await ctx.driver.prepareRestore(spec, { statePath: garbage });
    cleanup.vm(prepared.handle);
    const error = await prepared.start().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VmStartError);
    expect(String((error as Error).message)).toMatch(/restore failed/);
    const exit = await prepared.handle.exited;
    expect(exit.reason).toBeDefined();
    expect(await processStartTicks(prepared.handle.pid)).toBeUndefined();
  });

  it('detects a tampered snapshot file in a process that has not verified it yet', async () => {
    const freshProcessView = new TemplateSnapshots(ctx.templates, ctx.driver, ctx.pool, {
      bootTimeoutMs: 1_000,
      runDir: join(ctx.workDir, 'unused'),
      guestNameservers: [],
    });
    await expect(freshProcessView.verify(snapshot)).resolves.toBeUndefined();
    const tampered: TemplateSnapshot = {
      ...snapshot,
      manifest: {
        ...snapshot.manifest,
        files: { ...snapshot.manifest.files, state: { ...snapshot.manifest.files.state, sha256: '0'.repeat(64) } },
      },
    };
    const secondProcessView = new TemplateSnapshots(ctx.templates, ctx.driver, ctx.pool, {
      bootTimeoutMs: 1_000,
      runDir: join(ctx.workDir, 'unused'),
      guestNameservers: [],
    });
    await expect(secondProcessView.verify(tampered)).rejects.toBeInstanceOf(SnapshotIntegrityError);
  });
});
