import { ConfigError, HostAgentEnv, HostVmmEnv, loadConfig } from '@kiln/config';
import { CgroupUnavailableError } from './cgroup.errors';

export type CgroupMode = 'auto' | 'v2' | 'v1' | 'off';

/** Per-VM cgroup settings (HostVmmEnv's KILN_VMM_CGROUP_* and the TCG translation-buffer cap). */
export class VmCgroupsConfig {
  constructor(
    readonly mode: CgroupMode,
    /** Parent group of every VM's group, relative to the v2 mount or to the agent's own v1 groups. */
    readonly parent: string,
    /** Memory a VMM holds beyond guest RAM (plus the translation buffer under TCG). */
    readonly memoryOverheadMib: number,
    readonly tcgTranslationBufferMib: number,
    /** Tasks beyond one per vCPU. */
    readonly pidsMargin: number,
    /** CPU beyond the vCPUs for QEMU's own threads (one main loop per VMM), in percent of one CPU. */
    readonly cpuHeadroomPercent = 0,
  ) {}

  /** The agent's network prefix tells two agents on one machine apart; it names their parent groups too. */
  static from(env: HostVmmEnv): VmCgroupsConfig {
    const prefix = env instanceof HostAgentEnv ? env.KILN_NETWORK_PREFIX : 'vmm';
    return new VmCgroupsConfig(
      env.KILN_VMM_CGROUP as CgroupMode,
      env.KILN_VMM_CGROUP_PARENT ?? `kiln-${prefix}`,
      env.KILN_VMM_CGROUP_MEMORY_OVERHEAD_MIB,
      env.KILN_VMM_TCG_TB_MIB,
      env.KILN_VMM_CGROUP_PIDS_MARGIN,
      env.KILN_VMM_CGROUP_CPU_HEADROOM_PERCENT,
    );
  }

  /** For contexts without the agent's env (test harnesses, benchmarks): same variables, same checks. */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): VmCgroupsConfig {
    try {
      return VmCgroupsConfig.from(loadConfig(HostVmmEnv, env));
    } catch (error) {
      if (error instanceof ConfigError) throw new CgroupUnavailableError(error.message);
      throw error;
    }
  }
}
