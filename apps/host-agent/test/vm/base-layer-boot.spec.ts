import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BaseLayersConfig } from '../../src/template-build/base-layers';
import { baseLayersFor, buildAndPushImage, freePort, run, startRegistry } from '../template-build/base-layers-fixtures';
import { hostTscKhz } from '../../src/vmm/host-tsc';
import { DATA_DIR } from './vm-test-context';

// An image base boots with `base`'s kernel and the repo's initramfs: a busybox-only image (no libc, no bash, no tini)
// pulled from a local registry, with the Kiln runtime injected, answers the guest agent's /health. QEMU is started
// directly (user-mode network, a host port forwarded to the agent) so the test needs no tap or netns.
const REPO = join(__dirname, '..', '..', '..', '..');

describe('base layer from an image boots the Kiln runtime', () => {
  let root: string;
  let registry: { address: string; stop: () => Promise<void> } | undefined;
  let qemu: ChildProcess | undefined;

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'kiln-base-layer-boot-'));
  });

  afterAll(async () => {
    if (qemu && qemu.exitCode === null) {
      const exited = new Promise((resolve) => qemu!.once('exit', resolve));
      qemu.kill('SIGKILL');
      await exited;
    }
    await registry?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  it('the guest agent answers /health', async () => {
    const base = join(DATA_DIR, 'templates/base/current');
    const dataDir = join(root, 'data');
    mkdirSync(join(dataDir, 'templates'), { recursive: true });
    symlinkSync(join(DATA_DIR, 'templates/base'), join(dataDir, 'templates/base'));

    registry = await startRegistry(join(root, 'registry'), 'kiln', 'secret');
    mkdirSync(join(root, 'image'));
    buildAndPushImage(join(root, 'image'), `docker://${registry.address}/kiln/boot:v1`, 'kiln:secret', 'boot');
    const layers = baseLayersFor(new BaseLayersConfig(dataDir));
    const layer = await layers.prepare(`${registry.address}/kiln/boot:v1`, { username: 'kiln', password: 'secret' }, () => undefined, new AbortController().signal);

    // The repo's initramfs init (which prefers /opt/kiln/bin/tini) in base's initramfs.
    const initramfsDir = join(root, 'initramfs');
    mkdirSync(initramfsDir);
    run('sh', ['-c', 'cd "$1" && gzip -dc "$2" | cpio -i --quiet -d', 'sh', initramfsDir, join(base, 'initramfs.cpio.gz')]);
    run('install', ['-m', '0755', join(REPO, 'tools/guest-image/initramfs-init.sh'), join(initramfsDir, 'init')]);
    const initrd = join(root, 'initramfs.cpio.gz');
    run('sh', ['-c', 'cd "$1" && find . | cpio -o -H newc --quiet --owner=0:0 | gzip -1 >"$2"', 'sh', initramfsDir, initrd]);

    const disk = join(root, 'disk.ext4');
    run('cp', ['--sparse=always', layer.rootfsPath, disk]);
    run('chmod', ['0644', disk]);
    const port = await freePort();
    const serial = join(root, 'serial.log');
    // As the agent's TCG guests: the host's TSC frequency so the kernel skips PIT calibration (which hangs here).
    const tscKhz = await hostTscKhz();
    const tsc = tscKhz ? ` tsc_early_khz=${tscKhz} tsc=reliable` : '';
    qemu = spawn('qemu-system-x86_64', [
      '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=off', '-accel', 'tcg,thread=multi', '-cpu', 'qemu64,+arat', '-m', '512M', '-smp', '1',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-serial', `file:${serial}`,
      '-kernel', join(base, 'vmlinuz'), '-initrd', initrd,
      '-append', `console=ttyS0 reboot=t panic=-1 kiln.ip=10.0.2.15/24 kiln.gw=10.0.2.2${tsc}`,
      '-drive', `id=root,file=${disk},format=raw,if=none`, '-device', 'virtio-blk-device,drive=root',
      '-netdev', `user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:49983`, '-device', 'virtio-net-device,netdev=n0',
    ], { stdio: 'ignore' });

    const deadline = Date.now() + 240_000;
    let status = 0;
    while (Date.now() < deadline && qemu.exitCode === null) {
      status = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(2_000) }).then((r) => r.status, () => 0);
      if (status === 204) break;
      await new Promise((r) => setTimeout(r, 1_000));
    }
    const console = readFileSync(serial, 'utf8');
    if (process.env.KILN_TEST_SHOW_SERIAL) process.stdout.write(console.split('\n').filter((line) => !line.startsWith('[')).join('\n'));
    expect([status, console.slice(-3000)]).toEqual([204, expect.stringContaining('(image runtime)')]);
  }, 420_000);
});
