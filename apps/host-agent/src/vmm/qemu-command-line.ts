import { isAbsolute } from 'node:path';
import { privilegeDropArgs, qemuVersionAtLeast, type QemuVersion } from './qemu-version';
import { InvalidVmSpecError } from './vmm.errors';
import type { VmAccelerator, VmSpec } from './vmm-driver';

export interface QemuLaunchOptions {
  /** Of the binary that will run these arguments: option spellings changed between releases. */
  qemuVersion: QemuVersion;
  accelerator: VmAccelerator;
  tcgTranslationBufferMib: number;
  qmpSocketPath: string;
  pidFilePath: string;
  /**
   * Wait for a migration stream (-incoming defer): QEMU 7.2 can only enable x-ignore-shared
   * over QMP, and it must be on before the stream is read.
   */
  incoming?: boolean;
  startPaused?: boolean;
  /** Host TSC frequency handed to TCG guests so they skip PIT calibration (see host-tsc.ts). */
  tcgGuestTscKhz?: number;
  /**
   * The VM's own uid and gid QEMU switches to once its devices are open (-run-with user=, or -runas, both take
   * `uid:gid` without a passwd entry; supplementary groups are dropped). Unset: it stays root, and set*uid calls are
   * forbidden by its seccomp filter instead.
   */
  runAs?: { uid: number; gid: number };
  /**
   * Inherited fds of the writable root disk, one opened read-write and one read-only, to use instead of its path.
   * An unprivileged QEMU could not open a root-owned layer, and after an incoming migration QEMU re-opens its
   * images when it resumes. QEMU matches fd-set members by access mode, and probes images read-only first.
   */
  rootDiskFds?: { readWrite: number; readOnly: number };
  /**
   * Directory QEMU chroots into after start-up; with it QEMU may also neither spawn nor change scheduling or resource
   * limits. A clone opens nothing once running (snapshot and disk arrive on inherited fds), a cold-booted VM only
   * connects to the socket its snapshot is written to, which the agent creates in this directory.
   */
  confineTo?: string;
}

const ROOT_DISK_FDSET = 1;
const VM_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const INTERFACE_NAME = /^[A-Za-z0-9_.-]{1,15}$/;
/** sockaddr_un.sun_path is 108 bytes including the terminator. */
const MAX_UNIX_SOCKET_PATH = 107;

/** The directory a cold-booted VM's QEMU is chrooted into: empty but for the socket a snapshot is written to. */
export function confinementDir(stateDir: string): string {
  return `${stateDir}/jail`;
}

/** Name of the snapshot socket inside the VM's chroot (QEMU connects to `/<name>`). */
export const SNAPSHOT_SOCKET_NAME = 'snapshot.sock';

export function snapshotSocketPath(stateDir: string): string {
  return `${confinementDir(stateDir)}/${SNAPSHOT_SOCKET_NAME}`;
}

/** Rejects specs QEMU would choke on, with a message that names the bad field. */
export function validateVmSpec(spec: VmSpec): void {
  const fail = (message: string): never => {
    throw new InvalidVmSpecError(`vm ${JSON.stringify(spec.id)}: ${message}`);
  };
  if (typeof spec.id !== 'string' || !VM_ID.test(spec.id)) fail('id must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}');
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 64) fail('vcpus must be an integer in 1..64');
  if (!Number.isInteger(spec.memoryMib) || spec.memoryMib < 64 || spec.memoryMib > 1024 * 1024) {
    fail('memoryMib must be an integer of at least 64');
  }
  const paths: Array<[string, string | undefined]> = [
    ['kernelPath', spec.kernelPath],
    ['initrdPath', spec.initrdPath],
    ['rootDisk.path', spec.rootDisk?.path],
    ['stateDir', spec.stateDir],
    ['serialLogPath', spec.serialLogPath],
    ['memoryFile.path', spec.memoryFile?.path],
    ['network.netnsPath', spec.network?.netnsPath],
  ];
  for (const [name, value] of paths) {
    if (value === undefined && (name.startsWith('memoryFile') || name.startsWith('network'))) continue;
    if (typeof value !== 'string' || !isAbsolute(value)) fail(`${name} must be an absolute path`);
    if (/[\0\n]/.test(value as string)) fail(`${name} contains a NUL or newline`);
  }
  if (spec.rootDisk.format !== 'raw' && spec.rootDisk.format !== 'qcow2') fail('rootDisk.format must be raw or qcow2');
  if (typeof spec.kernelArgs !== 'string' || /[\0\n]/.test(spec.kernelArgs)) fail('kernelArgs must be one line');
  if (spec.network) {
    if (!INTERFACE_NAME.test(spec.network.tapName)) fail('network.tapName is not a valid interface name');
    if (!MAC.test(spec.network.guestMac)) fail('network.guestMac must look like 02:fc:00:00:00:06');
  }
  if (spec.accelerator !== undefined && spec.accelerator !== 'kvm' && spec.accelerator !== 'tcg') {
    fail('accelerator must be kvm or tcg');
  }
  if (`${spec.stateDir}/qmp.sock`.length > MAX_UNIX_SOCKET_PATH) fail('stateDir is too long for a unix socket path');
  // A VM that is not a clone may be snapshotted: the agent listens for the stream in the VM's chroot (snapshotSocketPath).
  if ((!spec.memoryFile || spec.memoryFile.share) && snapshotSocketPath(spec.stateDir).length > MAX_UNIX_SOCKET_PATH) {
    fail('stateDir is too long for the snapshot socket path');
  }
}

function kernelCommandLine(spec: VmSpec, options: QemuLaunchOptions): string {
  if (options.accelerator !== 'tcg' || !options.tcgGuestTscKhz) return spec.kernelArgs;
  return `${spec.kernelArgs} tsc_early_khz=${options.tcgGuestTscKhz} tsc=reliable`;
}

/**
 * QEMU's seccomp filter. -runas needs setuid/setgid at the end of start-up, so with it set*uid stay allowed (once
 * QEMU is unprivileged they cannot regain anything); a confined clone may also neither spawn nor change its own
 * scheduling or resource limits.
 */
export function seccompPolicy(options: Pick<QemuLaunchOptions, 'runAs' | 'confineTo'>): string {
  const rules = ['on', 'obsolete=deny', `elevateprivileges=${options.runAs ? 'allow' : 'deny'}`];
  if (options.confineTo) rules.push('spawn=deny', 'resourcecontrol=deny');
  return rules.join(',');
}

/**
 * A clone's private (copy-on-write) mapping of the template memory file, opened O_RDONLY so that not even a VMM that
 * escaped its guest can write the file every clone maps. QEMU 8.2 added rom=off, which keeps such guest RAM writable;
 * before it readonly=on turns guest RAM into ROM, so on 7.2 the file is opened read-write (the mapping is still
 * private: guest writes never reach the file).
 */
function privateMemoryFileArgs(spec: VmSpec, version: QemuVersion): string[] {
  if (!spec.memoryFile || spec.memoryFile.share || !qemuVersionAtLeast(version, 8, 2)) return [];
  return ['readonly=on', 'rom=off'];
}

/** QEMU splits option values on commas; a literal comma is written twice. */
function optionValue(value: string): string {
  return value.replace(/,/g, ',,');
}

/**
 * The QEMU microvm command line for a spec. A restore must use exactly the command line of
 * the VM that was snapshotted (same devices, same memory backend id), which is why both
 * paths go through this one function and only the memory-file sharing and -incoming differ.
 */
export function buildQemuArgs(spec: VmSpec, options: QemuLaunchOptions): string[] {
  const machine = ['microvm', 'x-option-roms=off', 'isa-serial=on', 'rtc=off'];
  const args: string[] = ['-name', `kiln-${spec.id}`];

  if (options.accelerator === 'kvm') {
    args.push('-accel', 'kvm', '-cpu', 'host');
  } else {
    // ARAT (the local APIC timer keeps running in deep idle): without it the guest kernel needs a broadcast timer
    // that microvm lacks, stays on a periodic 250 Hz tick and never goes tickless, and every idle clone costs the
    // host ~10% of a core in timer interrupts under TCG.
    args.push('-accel', `tcg,thread=multi,tb-size=${options.tcgTranslationBufferMib}`, '-cpu', 'qemu64,+arat');
  }

  args.push('-m', `${spec.memoryMib}M`, '-smp', String(spec.vcpus));
  if (spec.memoryFile) {
    args.push(
      '-object',
      [
        'memory-backend-file',
        'id=ram',
        `size=${spec.memoryMib}M`,
        `mem-path=${optionValue(spec.memoryFile.path)}`,
        `share=${spec.memoryFile.share ? 'on' : 'off'}`,
        'prealloc=off',
        ...privateMemoryFileArgs(spec, options.qemuVersion),
      ].join(','),
    );
    machine.push('memory-backend=ram');
  }
  args.push('-M', machine.join(','));

  args.push(
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-sandbox',
    seccompPolicy(options),
    '-serial',
    `file:${optionValue(spec.serialLogPath)}`,
    '-qmp',
    `unix:${optionValue(options.qmpSocketPath)},server=on,wait=off`,
    '-pidfile',
    options.pidFilePath,
    '-kernel',
    spec.kernelPath,
    '-initrd',
    spec.initrdPath,
    '-append',
    kernelCommandLine(spec, options),
  );

  // An fd set is how QEMU takes a file it may not open itself; every (re)open of /dev/fdset/N dups from it.
  const diskFds = options.rootDiskFds;
  if (diskFds) {
    args.push('-add-fd', `fd=${diskFds.readWrite},set=${ROOT_DISK_FDSET},opaque=root-disk-rw`);
    args.push('-add-fd', `fd=${diskFds.readOnly},set=${ROOT_DISK_FDSET},opaque=root-disk-ro`);
  }
  const drive = [
    'id=root',
    `file=${diskFds ? `/dev/fdset/${ROOT_DISK_FDSET}` : optionValue(spec.rootDisk.path)}`,
    `format=${spec.rootDisk.format}`,
    'if=none',
    'discard=unmap',
  ];
  if (spec.rootDisk.readOnly) drive.push('read-only=on');
  // Saving a snapshot inactivates the disk, and a -drive image (auto-read-only=on) then reopens its file read-only
  // by path, which fails once QEMU is chrooted: a disk opened by path keeps the fd it was opened with instead.
  else if (!diskFds) drive.push('auto-read-only=off');
  args.push('-drive', drive.join(','), '-device', 'virtio-blk-device,drive=root');

  if (spec.network) {
    args.push(
      '-netdev',
      `tap,id=net0,ifname=${spec.network.tapName},script=no,downscript=no`,
      '-device',
      `virtio-net-device,netdev=net0,mac=${spec.network.guestMac}`,
    );
  }

  // A checkpoint saves device state alone (xen-save-devices-state), a stream without the configuration section;
  // every VM saves and loads without it, so template snapshots and checkpoints load the same way.
  args.push('-global', 'migration.send-configuration=off');

  const runAs = options.runAs && `${options.runAs.uid}:${options.runAs.gid}`;
  args.push(...privilegeDropArgs(options.qemuVersion, { runAs, chrootTo: options.confineTo }));
  if (options.startPaused) args.push('-S');
  if (options.incoming) args.push('-incoming', 'defer');
  return args;
}
