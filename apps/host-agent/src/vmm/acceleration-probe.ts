import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { release } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Inject, Injectable, Logger } from '@nestjs/common';
import { TemplateStore } from '../template/template-store';
import { readQemuVersionLine } from './qemu-version';
import { VmmConfig } from './vmm.config';
import type { VmAccelerator } from './vmm-driver';

export interface AccelerationReport {
  accelerator: VmAccelerator;
  /** config: forced by KILN_VMM_ACCEL; probe: measured now; cache: measured earlier on this host. */
  source: 'config' | 'probe' | 'cache';
  /** Why KVM was or was not chosen. */
  detail: string;
  qemuVersion?: string;
  guestKernelRelease?: string;
  hostKernelRelease: string;
  probedAt?: string;
  probeDurationMs?: number;
}

interface ProbeCacheEntry extends AccelerationReport {
  key: string;
}

/** Printed by the initramfs when booted with kiln.probe=1 (tools/guest-image/initramfs-init.sh). */
const PROBE_MARKER = 'KILN_PROBE_OK';
/** Template whose kernel and initramfs boot the probe guest. */
const PROBE_TEMPLATE = 'base';

/**
 * Decides KVM or TCG once per host. /dev/kvm existing proves little (a PVM host accepts
 * KVM_CREATE_VM yet stock kernels hang under it), so the probe boots a real guest under KVM
 * with a deadline and only trusts KVM if the guest reaches userspace. The verdict is cached
 * in the data dir, keyed by QEMU version, guest kernel and host kernel.
 */
@Injectable()
export class AccelerationProbe {
  private readonly logger = new Logger(AccelerationProbe.name);
  private pending: Promise<AccelerationReport> | undefined;

  constructor(
    @Inject(VmmConfig) private readonly config: VmmConfig,
    @Inject(TemplateStore) private readonly templates: TemplateStore,
  ) {}

  async accelerator(): Promise<VmAccelerator> {
    return (await this.report()).accelerator;
  }

  /** The host's accelerator decision (for host info); probes on first call only. */
  report(): Promise<AccelerationReport> {
    this.pending ??= this.decide().catch((error: unknown) => {
      this.pending = undefined;
      throw error;
    });
    return this.pending;
  }

  private get cachePath(): string {
    return join(this.config.dataDir, 'vmm', 'acceleration.json');
  }

  private async decide(): Promise<AccelerationReport> {
    const hostKernelRelease = release();
    if (this.config.accelerator !== 'auto') {
      return {
        accelerator: this.config.accelerator,
        source: 'config',
        detail: `KILN_VMM_ACCEL=${this.config.accelerator}`,
        hostKernelRelease,
      };
    }
    const kvmDevice = await access('/dev/kvm', constants.R_OK | constants.W_OK).then(
      () => true,
      () => false,
    );
    if (!kvmDevice) {
      return { accelerator: 'tcg', source: 'probe', detail: '/dev/kvm is not accessible', hostKernelRelease };
    }
    const qemuVersion = await readQemuVersionLine(this.config.qemuBinary);
    const guest = await this.templates.resolve(PROBE_TEMPLATE).catch(() => undefined);
    if (!guest) {
      // Not cached: once the image is built the next agent start probes for real.
      return {
        accelerator: 'tcg',
        source: 'probe',
        detail: `no ${PROBE_TEMPLATE} template to boot a probe guest with; using TCG`,
        qemuVersion,
        hostKernelRelease,
      };
    }
    const key = [qemuVersion, guest.kernelRelease, hostKernelRelease].join('|');
    const cached = await this.readCache();
    if (cached?.key === key) {
      const { key: _key, ...report } = cached;
      return { ...report, source: 'cache' };
    }

    const started = performance.now();
    const kvm = await this.bootProbeGuest(guest.kernelPath, guest.initrdPath);
    const report: AccelerationReport = {
      accelerator: kvm.ok ? 'kvm' : 'tcg',
      source: 'probe',
      detail: kvm.detail,
      qemuVersion,
      guestKernelRelease: guest.kernelRelease,
      hostKernelRelease,
      probedAt: new Date().toISOString(),
      probeDurationMs: Math.round(performance.now() - started),
    };
    this.logger.log(`accelerator: ${report.accelerator} (${report.detail}, ${report.probeDurationMs} ms)`);
    await this.writeCache({ ...report, key });
    return report;
  }

  private async bootProbeGuest(kernelPath: string, initrdPath: string): Promise<{ ok: boolean; detail: string }> {
    await mkdir(join(this.config.dataDir, 'vmm'), { recursive: true });
    const workDir = await mkdtemp(join(this.config.dataDir, 'vmm', 'probe-'));
    const serialLog = join(workDir, 'serial.log');
    const args = [
      '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=off',
      '-accel', 'kvm', '-cpu', 'host',
      '-m', '128M', '-smp', '1',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-serial', `file:${serialLog}`,
      '-kernel', kernelPath, '-initrd', initrdPath,
      '-append', 'console=ttyS0 reboot=t panic=-1 quiet kiln.probe=1',
    ];
    const child = spawn(this.config.qemuBinary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-2000)));
    let exited = false;
    const exit = new Promise<void>((resolve) => {
      child.once('exit', () => ((exited = true), resolve()));
      child.once('error', (error) => ((exited = true), (stderr += error.message), resolve()));
    });
    const deadline = performance.now() + this.config.probeTimeoutMs;
    try {
      for (;;) {
        const serial = await readFile(serialLog, 'utf8').catch(() => '');
        if (serial.includes(PROBE_MARKER)) {
          return { ok: true, detail: `probe guest reached userspace under KVM` };
        }
        if (exited) {
          return { ok: false, detail: `KVM probe guest exited without the marker: ${firstLine(stderr) || 'no output'}` };
        }
        if (performance.now() > deadline) {
          return { ok: false, detail: `KVM probe guest did not reach userspace within ${this.config.probeTimeoutMs} ms` };
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      if (!exited) child.kill('SIGKILL');
      await exit;
      await rm(workDir, { recursive: true, force: true });
    }
  }

  private async readCache(): Promise<ProbeCacheEntry | undefined> {
    try {
      return JSON.parse(await readFile(this.cachePath, 'utf8')) as ProbeCacheEntry;
    } catch {
      return undefined;
    }
  }

  private async writeCache(entry: ProbeCacheEntry): Promise<void> {
    await mkdir(join(this.config.dataDir, 'vmm'), { recursive: true });
    const partial = `${this.cachePath}.partial-${process.pid}`;
    await writeFile(partial, JSON.stringify(entry, null, 2));
    await rename(partial, this.cachePath);
  }
}

function firstLine(text: string): string {
  return text.trim().split('\n')[0] ?? '';
}
