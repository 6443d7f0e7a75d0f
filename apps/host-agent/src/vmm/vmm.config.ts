import { InvalidVmSpecError } from './vmm.errors';

export type AcceleratorSetting = 'auto' | 'kvm' | 'tcg';

/** Host-level VMM settings, read once from the environment. */
export class VmmConfig {
  constructor(
    /** Root of Kiln's on-disk state (images, templates, probe cache). */
    readonly dataDir: string,
    readonly qemuBinary: string,
    /** KILN_VMM_ACCEL: auto probes KVM once per host and falls back to TCG. */
    readonly accelerator: AcceleratorSetting,
    /**
     * TCG translation-buffer size. QEMU's default (1 GiB, filled lazily) lets an idle
     * clone's private memory grow far beyond what the guest uses; a small buffer keeps
     * per-clone PSS low at the cost of more retranslation.
     */
    readonly tcgTranslationBufferMib: number,
    /** How long the KVM probe guest may take to print its marker. */
    readonly probeTimeoutMs: number,
  ) {}

  static fromEnv(env: NodeJS.ProcessEnv = process.env): VmmConfig {
    const accelerator = (env.KILN_VMM_ACCEL ?? 'auto').toLowerCase();
    if (accelerator !== 'auto' && accelerator !== 'kvm' && accelerator !== 'tcg') {
      throw new InvalidVmSpecError(`KILN_VMM_ACCEL must be auto, kvm or tcg, not "${env.KILN_VMM_ACCEL}"`);
    }
    return new VmmConfig(
      env.KILN_DATA_DIR ?? '/var/lib/kiln',
      env.KILN_QEMU_BINARY ?? 'qemu-system-x86_64',
      accelerator,
      positiveInt(env.KILN_VMM_TCG_TB_MIB, 16, 'KILN_VMM_TCG_TB_MIB'),
      positiveInt(env.KILN_VMM_PROBE_TIMEOUT_MS, 10000, 'KILN_VMM_PROBE_TIMEOUT_MS'),
    );
  }
}

function positiveInt(raw: string | undefined, fallback: number, name: string): number {
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) throw new InvalidVmSpecError(`${name} must be a positive integer, not "${raw}"`);
  return value;
}
