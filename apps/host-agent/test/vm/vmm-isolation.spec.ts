import { execFile } from 'node:child_process';
import { readFile, readlink, realpath } from 'node:fs/promises';
import { Agent } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Process } from '@kiln/proto/process';
import { initGuestAgent } from '../../src/guest-agent-client';
import type { NetworkSlot } from '../../src/network';
import { sha256File, type TemplateSnapshot } from '../../src/snapshot';
import type { TemplateBuild } from '../../src/template';
import type { VmHandle, VmSpec, VmStartOptions } from '../../src/vmm';
import { Cleanup, registerTestTemplate, startVmTestApp, type VmTestApp } from './vm-test-context';

const run = promisify(execFile);

/** What /proc says about a running VMM: its ids, its root, and the command line it was started with. */
interface VmmView {
  uid: number;
  gid: number;
  groups: string;
  seccomp: string;
  root: string;
  argv: string[];
}

async function inspectVmm(pid: number): Promise<VmmView> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '';
  const [ruid, euid] = field('Uid').split(/\s+/).map(Number);
  const [rgid] = field('Gid').split(/\s+/).map(Number);
  expect(euid).toBe(ruid);
  return {
    uid: ruid,
    gid: rgid,
    groups: field('Groups').trim(),
    seccomp: field('Seccomp'),
    root: await readlink(`/proc/${pid}/root`),
    argv: (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').filter(Boolean),
  };
}

/** `kill -0 <target>` run as the given uid/gid with no supplementary groups: what an escaped VMM could do. */
async function signalAs(uid: number, gid: number, target: number): Promise<{ ok: boolean; stderr: string }> {
  try {
    await run('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', 'kill', '-0', String(target)]);
    return { ok: true, stderr: '' };
  } catch (error) {
    return { ok: false, stderr: String((error as { stderr?: string }).stderr ?? error) };
  }
}

const valueAfter = (argv: string[], flag: string) => argv[argv.indexOf(flag) + 1];

describe('one identity per VMM, confined template VMs (real TCG VMs)', () => {
  let ctx: VmTestApp;
  const cleanup = new Cleanup();
  let build: TemplateBuild;
  let snapshot: TemplateSnapshot;
  let templateVmm: (VmmView & { jail: string }) | undefined;

  beforeAll(async () => {
    ctx = await startVmTestApp();
    build = await registerTestTemplate(ctx.templates, 'ktvm-iso', cleanup);
  });

  afterAll(async () => {
    try {
      await cleanup.run();
    } finally {
      await ctx?.close();
    }
  });

  it('boots the template VM under its own uid, chrooted and denied spawning, and its snapshot is saved without exec:', async () => {
    // The template VM lives only inside ensure(): look at its process as soon as the driver has started it.
    const driver = ctx.driver;
    const spawnVm = driver.spawn.bind(driver);
    const spy = jest.spyOn(driver, 'spawn').mockImplementation(async (spec: VmSpec, options?: VmStartOptions) => {
      const vm = await spawnVm(spec, options);
      templateVmm = { ...(await inspectVmm(vm.pid)), jail: await realpath(join(spec.stateDir, 'jail')) };
      return vm;
    });
    let templateBoots = 0;
    try {
      snapshot = await ctx.snapshots.ensure('ktvm-iso');
      templateBoots = spy.mock.calls.length;
    } finally {
      spy.mockRestore();
    }
    expect(templateBoots).toBe(1);
    const vmm = templateVmm!;
    const { base, count } = ctx.config.vmmUids!;
    expect(vmm.uid).toBeGreaterThanOrEqual(base);
    expect(vmm.uid).toBeLessThan(base + count);
    expect(vmm.gid).toBe(vmm.uid);
    expect(vmm.groups).toBe(String(vmm.gid));
    expect(vmm.seccomp).toBe('2');
    expect(valueAfter(vmm.argv, '-sandbox')).toContain('spawn=deny');
    // Chrooted into its own directory, which held nothing but the socket the snapshot was written to.
    expect(vmm.root).toBe(vmm.jail);
    expect(vmm.argv.join(' ')).not.toContain('exec:');
    // The stream arrived whole: a device-state file of the expected shape that the manifest vouches for.
    expect(snapshot.manifest.files.state.bytes).toBeGreaterThan(1024);
    expect(await sha256File(snapshot.statePath)).toBe(snapshot.manifest.files.state.sha256);
  });

  it('restores clones under distinct uids: one cannot signal the other, while signalling itself works', async () => {
    const memoryBefore = await sha256File(snapshot.memoryPath);
    expect(memoryBefore).toBe(snapshot.manifest.files.memory.sha256);

    const clones: Array<{ vm: VmHandle; slot: NetworkSlot }> = [];
    for (const id of ['ktvm-iso-a', 'ktvm-iso-b']) {
      const slot = await ctx.acquireSlot(cleanup);
      const layer = await ctx.layers.createLayer(id, snapshot.disk, ctx.workDir);
      cleanup.add(() => ctx.layers.removeLayer(layer));
      const vm = cleanup.vm(
        await ctx.snapshots.restore(snapshot, {
          id,
          stateDir: join(ctx.workDir, id),
          serialLogPath: join(ctx.workDir, `${id}.serial.log`),
          rootDisk: { path: layer.path, format: layer.format },
          network: { netnsPath: slot.netnsPath, tapName: slot.tapName, guestMac: slot.guestMac },
        }),
      );
      clones.push({ vm, slot });
    }
    const [a, b] = await Promise.all(clones.map(({ vm }) => inspectVmm(vm.pid)));
    expect(a.uid).not.toBe(b.uid);
    for (const view of [a, b]) {
      expect(view.gid).toBe(view.uid);
      expect(view.seccomp).toBe('2');
      expect(valueAfter(view.argv, '-sandbox')).toContain('spawn=deny');
    }

    // The control: the probe can signal a process of its own uid, so its failure below is the uid boundary.
    expect(await signalAs(a.uid, a.gid, clones[0].vm.pid)).toEqual({ ok: true, stderr: '' });
    const crossed = await signalAs(a.uid, a.gid, clones[1].vm.pid);
    expect(crossed.ok).toBe(false);
    expect(crossed.stderr).toMatch(/not permitted/i);
    const back = await signalAs(b.uid, b.gid, clones[0].vm.pid);
    expect(back.ok).toBe(false);
    expect(back.stderr).toMatch(/not permitted/i);

    // Clone a writes most of its RAM (a tmpfs filled to 70% of it with a pattern no template page holds); none of it
    // may reach the template memory file every clone maps.
    const connections = new Agent({ keepAlive: true });
    try {
      const { slot } = clones[0];
      await initGuestAgent(slot.hostAddress, connections, { timestamp: new Date().toISOString() }, 60_000, { port: build.agentPort });
      const transport = createConnectTransport({
        baseUrl: `http://${slot.hostAddress}:${build.agentPort}`,
        httpVersion: '1.1',
        nodeOptions: { agent: connections },
      });
      const fill =
        'mkdir -p /run/kiln-fill && mount -t tmpfs -o size=70% kiln-fill /run/kiln-fill && ' +
        '{ yes kiln-clone-wrote-this-page > /run/kiln-fill/data 2>/dev/null; true; } && ' +
        'du -sm /run/kiln-fill | cut -f1';
      let stdout = '';
      const asRoot = { Authorization: `Basic ${Buffer.from('root:').toString('base64')}` };
      for await (const response of createClient(Process, transport).start(
        { process: { cmd: '/bin/sh', args: ['-c', fill], envs: {} } },
        { headers: asRoot, timeoutMs: 300_000 },
      )) {
        const event = response.event?.event;
        if (event?.case === 'data' && event.value.output.case === 'stdout') stdout += Buffer.from(event.value.output.value).toString();
      }
      const filledMib = Number(stdout.trim());
      expect(filledMib).toBeGreaterThanOrEqual(Math.floor(build.memoryMib * 0.6));
    } finally {
      connections.destroy();
    }
    await Promise.all(clones.map(({ vm }) => vm.stop()));
    expect(await sha256File(snapshot.memoryPath)).toBe(memoryBefore);
  });
});
