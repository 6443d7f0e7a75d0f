import { buildQemuArgs, validateVmSpec } from './qemu-command-line';
import { parseQemuVersion } from './qemu-version';
import { InvalidVmSpecError } from './vmm.errors';
import type { VmSpec } from './vmm-driver';

const spec: VmSpec = {
  id: 'sbx-1',
  vcpus: 2,
  memoryMib: 512,
  kernelPath: '/data/t/vmlinuz',
  initrdPath: '/data/t/initramfs.cpio.gz',
  kernelArgs: 'console=ttyS0 quiet',
  rootDisk: { path: '/data/s/sbx-1-rootfs.qcow2', format: 'qcow2' },
  network: { netnsPath: '/run/netns/kiln-slot-1', tapName: 'tap0', guestMac: '02:fc:00:00:00:06' },
  stateDir: '/run/kiln/vms/sbx-1',
  serialLogPath: '/run/kiln/vms/sbx-1/serial.log',
};

const options = {
  qemuVersion: { major: 7, minor: 2, micro: 19 },
  accelerator: 'tcg' as const,
  tcgTranslationBufferMib: 32,
  qmpSocketPath: '/run/kiln/vms/sbx-1/qmp.sock',
  pidFilePath: '/run/kiln/vms/sbx-1/qemu.pid',
};

function valueOf(args: string[], flag: string): string[] {
  return args.flatMap((arg, i) => (arg === flag ? [args[i + 1]] : []));
}

describe('validateVmSpec', () => {
  it('accepts a complete spec', () => {
    expect(() => validateVmSpec(spec)).not.toThrow();
  });

  it.each([
    ['an id with a slash', { id: 'a/b' }],
    ['zero vcpus', { vcpus: 0 }],
    ['fractional memory', { memoryMib: 100.5 }],
    ['a relative kernel path', { kernelPath: 'vmlinuz' }],
    ['an unknown disk format', { rootDisk: { path: '/d', format: 'vmdk' } }],
    ['a kernel command line with a newline', { kernelArgs: 'a\nb' }],
    ['a malformed MAC', { network: { ...spec.network!, guestMac: '02:fc:00' } }],
    ['a tap name longer than 15 characters', { network: { ...spec.network!, tapName: 'tap0123456789abcdef' } }],
    ['a state dir too long for a unix socket', { stateDir: `/${'x'.repeat(120)}` }],
    ['a state dir too long for the snapshot socket in its chroot', { stateDir: `/${'x'.repeat(90)}` }],
  ])('rejects %s', (_label, override) => {
    expect(() => validateVmSpec({ ...spec, ...(override as Partial<VmSpec>) })).toThrow(InvalidVmSpecError);
  });
});

describe('buildQemuArgs', () => {
  it('confines every VM to its own uid:gid, a chroot and no spawning', () => {
    const vmm = { uid: 200_007, gid: 200_007 };
    const clone = buildQemuArgs(spec, { ...options, runAs: vmm, confineTo: '/var/lib/kiln/vmm/empty', incoming: true });
    expect(valueOf(clone, '-runas')).toEqual(['200007:200007']);
    expect(valueOf(clone, '-chroot')).toEqual(['/var/lib/kiln/vmm/empty']);
    expect(valueOf(clone, '-sandbox')).toEqual(['on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny']);
    const template = buildQemuArgs(spec, { ...options, runAs: vmm, confineTo: '/run/kiln/vms/sbx-1/jail' });
    expect(valueOf(template, '-sandbox')).toEqual(['on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny']);
    expect(valueOf(template, '-chroot')).toEqual(['/run/kiln/vms/sbx-1/jail']);
    const asRoot = buildQemuArgs(spec, options);
    expect(valueOf(asRoot, '-sandbox')).toEqual(['on,obsolete=deny,elevateprivileges=deny']);
    expect(asRoot).not.toContain('-runas');
  });

  it('keeps the fd of a disk opened by path across a snapshot (no reopen by path inside the chroot)', () => {
    expect(valueOf(buildQemuArgs(spec, options), '-drive')[0]).toContain(',auto-read-only=off');
    const byFd = buildQemuArgs(spec, { ...options, incoming: true, rootDiskFds: { readWrite: 4, readOnly: 5 } });
    expect(valueOf(byFd, '-drive')[0]).toMatch(/^id=root,file=\/dev\/fdset\/1,/);
    expect(valueOf(byFd, '-drive')[0]).not.toContain('auto-read-only');
    const readOnly = buildQemuArgs({ ...spec, rootDisk: { ...spec.rootDisk, readOnly: true } }, options);
    expect(valueOf(readOnly, '-drive')[0]).not.toContain('auto-read-only');
  });

  it.each([
    ['7.2', { major: 7, minor: 2, micro: 19 }, ['-runas', '200001:200002', '-chroot', '/d/empty']],
    ['8.2', { major: 8, minor: 2, micro: 2 }, ['-runas', '200001:200002', '-run-with', 'chroot=/d/empty']],
    ['9.1', { major: 9, minor: 1, micro: 0 }, ['-run-with', 'user=200001:200002,chroot=/d/empty']],
    ['10.0', { major: 10, minor: 0, micro: 3 }, ['-run-with', 'user=200001:200002,chroot=/d/empty']],
  ])('drops privileges in the spelling QEMU %s accepts', (_label, qemuVersion, expected) => {
    const runAs = { uid: 200_001, gid: 200_002 };
    const args = buildQemuArgs(spec, { ...options, qemuVersion, runAs, confineTo: '/d/empty', incoming: true });
    const start = args.findIndex((arg) => arg === '-runas' || arg === '-run-with');
    expect(args.slice(start, start + expected.length)).toEqual(expected);
    expect(args.filter((arg) => ['-runas', '-chroot', '-run-with'].includes(arg))).toHaveLength(expected.filter((a) => a.startsWith('-')).length);
  });

  it('escapes a comma in the chroot directory for -run-with', () => {
    const args = buildQemuArgs(spec, { ...options, qemuVersion: { major: 9, minor: 2, micro: 0 }, confineTo: '/d/a,b' });
    expect(valueOf(args, '-run-with')).toEqual(['chroot=/d/a,,b']);
  });

  it('reads the version QEMU prints', () => {
    expect(parseQemuVersion('QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)')).toEqual({ major: 7, minor: 2, micro: 19 });
    expect(parseQemuVersion('QEMU emulator version 10.0.2')).toEqual({ major: 10, minor: 0, micro: 2 });
    expect(parseQemuVersion('QEMU emulator version 9.1')).toEqual({ major: 9, minor: 1, micro: 0 });
    expect(parseQemuVersion('qemu: not found')).toBeUndefined();
  });

  it('builds a microvm with TCG, tap networking in the spec MAC and a virtio-blk root disk', () => {
    const args = buildQemuArgs(spec, options);
    expect(valueOf(args, '-M')).toEqual(['microvm,x-option-roms=off,isa-serial=on,rtc=off']);
    expect(valueOf(args, '-accel')).toEqual(['tcg,thread=multi,tb-size=32']);
    expect(valueOf(args, '-cpu')).toEqual(['qemu64,+arat']);
    expect(valueOf(args, '-smp')).toEqual(['2']);
    expect(valueOf(args, '-netdev')).toEqual(['tap,id=net0,ifname=tap0,script=no,downscript=no']);
    expect(valueOf(args, '-device')).toContain('virtio-net-device,netdev=net0,mac=02:fc:00:00:00:06');
    expect(valueOf(args, '-drive')[0]).toContain('format=qcow2');
    expect(args).toEqual(expect.arrayContaining(['-nodefaults', '-no-user-config', '-no-reboot']));
    expect(args).not.toContain('-incoming');
  });

  it('maps guest RAM from the memory file and waits for a migration stream on restore', () => {
    const args = buildQemuArgs({ ...spec, memoryFile: { path: '/snap/memory', share: false } }, { ...options, incoming: true });
    expect(valueOf(args, '-object')).toEqual(['memory-backend-file,id=ram,size=512M,mem-path=/snap/memory,share=off,prealloc=off']);
    expect(valueOf(args, '-M')[0]).toContain('memory-backend=ram');
    expect(valueOf(args, '-incoming')).toEqual(['defer']);
  });

  it("opens a clone's memory file read-only where QEMU keeps such RAM writable (8.2+: rom=off); never a template's", () => {
    const clone = { ...spec, memoryFile: { path: '/snap/memory', share: false } };
    const on82 = buildQemuArgs(clone, { ...options, qemuVersion: { major: 8, minor: 2, micro: 0 }, incoming: true });
    expect(valueOf(on82, '-object')[0]).toMatch(/,share=off,prealloc=off,readonly=on,rom=off$/);
    // 7.2 has readonly= but no rom=: its readonly=on turns guest RAM into ROM.
    const on72 = buildQemuArgs(clone, { ...options, incoming: true });
    expect(valueOf(on72, '-object')[0]).not.toContain('readonly');
    const template = buildQemuArgs({ ...spec, memoryFile: { path: '/snap/memory', share: true } }, { ...options, qemuVersion: { major: 9, minor: 2, micro: 0 } });
    expect(valueOf(template, '-object')[0]).not.toContain('readonly');
  });

  it('escapes commas in paths, which QEMU would otherwise read as option separators', () => {
    const args = buildQemuArgs({ ...spec, rootDisk: { path: '/data/a,b.qcow2', format: 'qcow2' } }, options);
    expect(valueOf(args, '-drive')[0]).toContain('file=/data/a,,b.qcow2,');
  });

  it('hands TCG guests the TSC frequency but leaves KVM guests alone', () => {
    expect(valueOf(buildQemuArgs(spec, { ...options, tcgGuestTscKhz: 2_600_000 }), '-append')).toEqual([
      'console=ttyS0 quiet tsc_early_khz=2600000 tsc=reliable',
    ]);
    const kvm = buildQemuArgs(spec, { ...options, accelerator: 'kvm', tcgGuestTscKhz: 2_600_000 });
    expect(valueOf(kvm, '-append')).toEqual(['console=ttyS0 quiet']);
    expect(valueOf(kvm, '-accel')).toEqual(['kvm']);
  });
});
