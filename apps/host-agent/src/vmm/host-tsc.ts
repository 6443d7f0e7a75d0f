import { readFile } from 'node:fs/promises';

/**
 * The host's TSC frequency in kHz, when the TSC is invariant (constant_tsc + nonstop_tsc).
 *
 * Under TCG the guest's TSC is the host's TSC. A guest kernel calibrates it against the
 * emulated PIT, which fails when the host is busy ("tsc: Unable to calibrate against PIT"),
 * and a microvm has no HPET or PM timer to fall back on, so the boot hangs. Handing the
 * guest the frequency (tsc_early_khz) skips the calibration.
 */
export async function hostTscKhz(cpuinfoPath = '/proc/cpuinfo'): Promise<number | undefined> {
  const cpuinfo = await readFile(cpuinfoPath, 'utf8').catch(() => '');
  const firstCpu = cpuinfo.split('\n\n')[0] ?? '';
  const flags = /^flags\s*:\s*(.*)$/m.exec(firstCpu)?.[1]?.split(/\s+/) ?? [];
  if (!flags.includes('constant_tsc') || !flags.includes('nonstop_tsc')) return undefined;
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)$/m.exec(firstCpu)?.[1]);
  return Number.isFinite(mhz) && mhz > 0 ? Math.round(mhz * 1000) : undefined;
}
