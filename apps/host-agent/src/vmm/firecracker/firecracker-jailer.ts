import { createHash } from 'node:crypto';
import { basename, join } from 'node:path';
import { vmGroupName, type CgroupLimits } from '../../cgroup';

/** Names of the files the driver puts in a VM's chroot, as the jailed Firecracker sees them (its `/`). */
export const CHROOT_FILES = {
  apiSocket: 'api.sock',
  kernel: 'vmlinux',
  initrd: 'initrd',
  rootDisk: 'rootfs',
  /** Device state of a restore (Firecracker's vmstate), linked in from the snapshot. */
  restoreState: 'restore.vmstate',
  /** The UFFD worker's socket: PUT /snapshot/load's mem_backend.backend_path. */
  uffdSocket: 'uffd.sock',
  /** Written by PUT /snapshot/create, then moved out by the agent. */
  snapshotState: 'snapshot.vmstate',
  snapshotMemory: 'snapshot.memory',
  firecrackerLog: 'firecracker.log',
} as const;

/**
 * Firecracker's instance id, which also names the cgroup the jailer creates under --parent-cgroup: the VM's group name
 * in VmCgroups (`vm-<VM id>`), so that group is VmCgroups' own (released with the VM, removed by start-up
 * reconciliation when a VM died while no agent ran). The jailer takes letters, digits and hyphens, 1-64 characters
 * (validate_instance_id); any other name (an underscore, too long with the prefix) becomes hyphens, cut to fit, plus
 * a hash of the VM id, so two VM ids never map to one jail or group.
 */
export function jailerIdFor(vmId: string): string {
  const groupName = vmGroupName(vmId);
  if (/^[A-Za-z0-9-]{1,64}$/.test(groupName)) return groupName;
  const suffix = createHash('sha256').update(vmId).digest('hex').slice(0, 8);
  return `${groupName.replace(/[^A-Za-z0-9-]/g, '-').slice(0, 64 - suffix.length - 1)}-${suffix}`;
}

/** Where the jailer builds a VM's jail: <chroot base>/<exec file name>/<id>, its chroot being `root` in it. */
export function jailDirFor(chrootBase: string, firecrackerBinary: string, jailerId: string): { jailDir: string; rootDir: string } {
  const jailDir = join(chrootBase, basename(firecrackerBinary), jailerId);
  return { jailDir, rootDir: join(jailDir, 'root') };
}

/** The cgroup the jailer creates for the VM (--cgroup-version, --parent-cgroup, one --cgroup per limit). */
export interface JailerCgroup {
  version: 'v2' | 'v1';
  /** Relative to each hierarchy's mount point (VmCgroups.jailerParent); the jailer refuses an absolute one. */
  parent: string;
  limits: CgroupLimits;
}

export interface JailerArgsInput {
  jailerId: string;
  firecrackerBinary: string;
  uid: number;
  gid: number;
  chrootBase: string;
  /** --netns: the jailer joins it before exec'ing Firecracker, so the tap of the VM's slot is visible. */
  netnsPath?: string;
  cgroup?: JailerCgroup;
}

/**
 * The jailer's command line (docs/jailer.md of the pinned release). No --daemonize: the jailer execs Firecracker in
 * the same process, so the pid the agent spawned is Firecracker's own, and its stdout/stderr stay on the VM's log.
 * No --new-pid-ns for the same reason (Firecracker would be the jailer's child). Firecracker's own arguments follow
 * `--`: the API socket inside the chroot.
 */
export function buildJailerArgs(input: JailerArgsInput): string[] {
  const args = [
    '--id', input.jailerId,
    '--exec-file', input.firecrackerBinary,
    '--uid', String(input.uid),
    '--gid', String(input.gid),
    '--chroot-base-dir', input.chrootBase,
  ];
  if (input.netnsPath) args.push('--netns', input.netnsPath);
  if (input.cgroup) {
    const { version, parent, limits } = input.cgroup;
    args.push('--cgroup-version', version === 'v2' ? '2' : '1', '--parent-cgroup', parent);
    const settings =
      version === 'v2'
        ? [`cpu.max=${limits.cpuQuotaUs} ${limits.cpuPeriodUs}`, `memory.max=${limits.memoryBytes}`, `pids.max=${limits.pidsMax}`]
        : [
            `cpu.cfs_period_us=${limits.cpuPeriodUs}`,
            `cpu.cfs_quota_us=${limits.cpuQuotaUs}`,
            `memory.limit_in_bytes=${limits.memoryBytes}`,
            `pids.max=${limits.pidsMax}`,
          ];
    for (const setting of settings) args.push('--cgroup', setting);
  }
  args.push('--', '--api-sock', `/${CHROOT_FILES.apiSocket}`);
  return args;
}
