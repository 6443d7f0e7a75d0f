import { ConfigError, HostVmmEnv, loadConfig } from '@kiln/config';
import { InvalidVmSpecError } from './vmm.errors';

export type AcceleratorSetting = 'auto' | 'kvm' | 'tcg';

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
  ) {}

  static from(env: HostVmmEnv): VmmConfig {
    return new VmmConfig(
      env.KILN_DATA_DIR,
      env.KILN_QEMU_BINARY,
      env.KILN_VMM_ACCEL as AcceleratorSetting,
      env.KILN_VMM_TCG_TB_MIB,
      env.KILN_VMM_PROBE_TIMEOUT_MS,
      env.KILN_VMM_UID_BASE === 0 ? undefined : { base: env.KILN_VMM_UID_BASE, count: env.KILN_VMM_UID_COUNT },
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
