import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { TemplateStore } from '../../src/template';
import { AccelerationProbe, VmmConfig } from '../../src/vmm';
import { DATA_DIR } from './vm-test-context';

// Boots the real probe guest (the base template's kernel and initramfs) under KVM. The probe
// cache goes to a scratch data dir so the host's cached verdict is neither used nor replaced.
describe('acceleration probe', () => {
  let cacheDir: string;
  const templates = new TemplateStore({ dataDir: DATA_DIR });
  const config = (accelerator: 'auto' | 'kvm' | 'tcg', dataDir: string) => new VmmConfig(dataDir, 'qemu-system-x86_64', accelerator, 16, 10_000);

  beforeAll(async () => {
    cacheDir = await mkdtemp(join(tmpdir(), 'kiln-probe-'));
  });
  afterAll(() => rm(cacheDir, { recursive: true, force: true }));

  it('takes KILN_VMM_ACCEL at its word without probing', async () => {
    const report = await new AccelerationProbe(config('tcg', cacheDir), templates).report();
    expect(report).toMatchObject({ accelerator: 'tcg', source: 'config' });
    expect(existsSync(join(cacheDir, 'vmm', 'acceleration.json'))).toBe(false);
  });

  // A host without /dev/kvm at all (some CI machines: no device node, not even the PVM one) is TCG without booting
  // anything, and nothing is cached: a host that gains the device later probes then.
  const hasKvmDevice = existsSync('/dev/kvm');

  (hasKvmDevice ? it.skip : it)('falls back to TCG without a probe boot when the host has no /dev/kvm', async () => {
    const report = await new AccelerationProbe(config('auto', cacheDir), templates).report();
    expect(report).toMatchObject({ accelerator: 'tcg', source: 'probe', detail: '/dev/kvm is not accessible', hostKernelRelease: release() });
    expect(existsSync(join(cacheDir, 'vmm', 'acceleration.json'))).toBe(false);
  });

  (hasKvmDevice ? it : it.skip)('probes once per host and serves later agent starts from the cache', async () => {
    const first = await new AccelerationProbe(config('auto', cacheDir), templates).report();
    expect(first.source).toBe('probe');
    expect(['kvm', 'tcg']).toContain(first.accelerator);
    expect(first.qemuVersion).toMatch(/^QEMU emulator version/);
    expect(first.guestKernelRelease).toBe((await templates.resolve('base')).kernelRelease);
    expect(first.hostKernelRelease).toBe(release());
    // KVM is chosen only when the probe guest reached userspace under it.
    expect(first.detail).toMatch(first.accelerator === 'kvm' ? /reached userspace/ : /did not|exited|not accessible/);
    const cached = JSON.parse(await readFile(join(cacheDir, 'vmm', 'acceleration.json'), 'utf8'));
    expect(cached.accelerator).toBe(first.accelerator);

    const started = Date.now();
    const second = await new AccelerationProbe(config('auto', cacheDir), templates).report();
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(second).toMatchObject({ source: 'cache', accelerator: first.accelerator, detail: first.detail });
  });
});
