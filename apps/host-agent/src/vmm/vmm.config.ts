import { join, resolve } from 'node:path';
import { ConfigError, HostVmmEnv, loadConfig } from '@kiln/config';
import { InvalidVmSpecError } from './vmm.errors';

export type AcceleratorSetting = 'auto' | 'kvm' | 'tcg';

/** KILN_VMM: which driver runs the host's VMs. */
export type VmmKind = 'qemu' | 'firecracker';

/** Where Firecracker's pieces are on this host (KILN_FIRECRACKER_*, KILN_JAILER_*). */
export interface FirecrackerHostSettings {
  binary: string;
  jailerBinary: string;
  /** Uncompressed ELF vmlinux every Firecracker VM boots. */
  kernelPath: string;
  /** The jailer's --chroot-base-dir. */
  chrootBase: string;
}

/**
 * The UFFD worker this checkout builds (apps/host-agent/uffd-worker/build): this file sits two levels below
 * apps/host-agent both as source (src/vmm) and compiled (dist/vmm).
 */
export const DEFAULT_UFFD_WORKER_BINARY = resolve(__dirname, '..', '..', 'uffd-worker', 'build', 'kiln-uffd-worker');

export function defaultFirecrackerSettings(dataDir: string): FirecrackerHostSettings {
  return {
    binary: '/usr/local/bin/firecracker',
    jailerBinary: '/usr/local/bin/jailer',
    kernelPath: join(dataDir, 'firecracker', 'vmlinux'),
    chrootBase: '/srv/jailer',
  };
}

/** Host-level VMM settings (HostVmmEnv, part of the agent's validated environment). */
export class VmmConfig {
  constructor(
    /** Root of Kiln's on-disk state (images, templates, probe cache). */
    readonly dataDir: string,
    readonly qemuBinary: string,
    /** KILN_VMM_ACCEL: auto probes KVM once per host and falls back to TCG. */
    readonly accelerator: AcceleratorSetting,
    /** TCG translation-buffer cap per VM (see HostVmmEnv.KILN_VMM_TCG_TB_MIB). */
    readonly tcgTranslationBufferMib: number,
    /** How long the KVM probe guest may take to print its marker. */
    readonly probeTimeoutMs: number,
    /**
     * The uids (gid = uid) QEMU drops to once its devices are open, one per VM (KILN_VMM_UID_BASE/COUNT);
     * undefined: QEMU stays root (KILN_VMM_UID_BASE=0).
     */
    readonly vmmUids?: { base: number; count: number },
    /** KILN_VMM. */
    readonly vmm: VmmKind = 'qemu',
    readonly firecracker: FirecrackerHostSettings = defaultFirecrackerSettings(dataDir),
    /** KILN_UFFD_WORKER_BINARY: serves the guest memory of Firecracker restores. */
    readonly uffdWorkerBinary: string = DEFAULT_UFFD_WORKER_BINARY,
  ) {}

  static from(env: HostVmmEnv): VmmConfig {
    return new VmmConfig(
      env.KILN_DATA_DIR,
      env.KILN_QEMU_BINARY,
      env.KILN_VMM_ACCEL as AcceleratorSetting,
      env.KILN_VMM_TCG_TB_MIB,
      env.KILN_VMM_PROBE_TIMEOUT_MS,
      env.KILN_VMM_UID_BASE === 0 ? undefined : { base: env.KILN_VMM_UID_BASE, count: env.KILN_VMM_UID_COUNT },
      env.KILN_VMM as VmmKind,
      {
        binary: env.KILN_FIRECRACKER_BINARY,
        jailerBinary: env.KILN_JAILER_BINARY,
        kernelPath: env.KILN_FIRECRACKER_KERNEL ?? join(env.KILN_DATA_DIR, 'firecracker', 'vmlinux'),
        chrootBase: env.KILN_JAILER_CHROOT_BASE,
      },
      env.KILN_UFFD_WORKER_BINARY ?? DEFAULT_UFFD_WORKER_BINARY,
    );
  }

  /** For tools that drive VMs without the agent (benchmarks, test harnesses): same variables, same checks. */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): VmmConfig {
    try {
      return VmmConfig.from(loadConfig(HostVmmEnv, env));
    } catch (error) {
      if (error instanceof ConfigError) throw new InvalidVmSpecError(error.message);
      throw error;
    }
  }
}
