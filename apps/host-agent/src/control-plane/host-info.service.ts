import { access, open, stat, statfs } from 'node:fs/promises';
import { arch, cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { Injectable, Logger } from '@nestjs/common';
import { HostAgentEnv, describeError } from '@kiln/config';
import { internalTlsFilesOf } from '@kiln/config/internal-tls';
import type { HostCapacity as ReportedCapacity, HostHeartbeat, HostMachineInfo } from '@kiln/messaging';
import { Acceleration, HostInfoResponse } from '@kiln/proto/hostagent';
import { ClonePool } from '../clone-pool';
import { NetworkSlotPool } from '../network';
import { SandboxManager } from '../sandbox/sandbox-manager.service';
import { TemplateStore } from '../template';
import { AccelerationProbe } from '../vmm';

export interface CachedTemplate {
  templateId: string;
  buildId: string;
  snapshotReady: boolean;
  vcpus: number;
  memoryMib: number;
  /** Paused clones of this build waiting in the pool: a create here skips the restore. */
  readyClones: number;
}

export const HOST_AGENT_VERSION = '0.1.0';

const MIB = 1024 * 1024;
/** A qcow2 image starts with this magic ("QFI\xfb"); its virtual size is the big-endian u64 at byte 24. */
const QCOW2_MAGIC = 0x514649fb;

/** What the agent tells the host monitor about itself: in every registration and every heartbeat. */
export interface HostReport {
  capacity: Required<ReportedCapacity>;
  usage: HostHeartbeat['usage'];
  templates: string[];
  readyCloneTemplates: string[];
  sandboxIds: string[];
  acceleration: 'kvm' | 'tcg';
  agentVersion: string;
}

@Injectable()
export class HostInfoService {
  private readonly logger = new Logger(HostInfoService.name);
  /** Disk size (MiB) of each template build's rootfs, by `templateId/buildId`: a build's files never change. */
  private readonly templateDiskMib = new Map<string, number>();
  private lastDiskProblem?: string;

  constructor(
    private readonly env: HostAgentEnv,
    private readonly sandboxes: SandboxManager,
    private readonly slots: NetworkSlotPool,
    private readonly templates: TemplateStore,
    private readonly acceleration: AccelerationProbe,
    private readonly clones: ClonePool,
  ) {}

  /** Templates whose current build is on this host; placement prefers hosts with a clone ready, then a snapshot. */
  async cachedTemplates(): Promise<CachedTemplate[]> {
    const pooled = new Map(this.clones.describe().map((p) => [`${p.templateId}/${p.buildId}`, p.clones.length]));
    // A snapshot on disk that failed to load (and is being retried) is not one a create can use.
    const notReady = new Set(this.sandboxes.templateSnapshots().filter((s) => s.state !== 'ready').map((s) => `${s.templateId}/${s.buildId}`));
    const cached: CachedTemplate[] = [];
    for (const summary of await this.templates.list()) {
      if (!summary.currentBuildId) continue;
      const build = await this.templates.resolve(summary.templateId).catch(() => undefined);
      if (!build) continue;
      const snapshotReady =
        !notReady.has(`${build.templateId}/${build.buildId}`) && (await access(join(build.snapshotDir, 'manifest.json')).then(() => true, () => false));
      cached.push({
        templateId: build.templateId,
        buildId: build.buildId,
        snapshotReady,
        vcpus: build.vcpus,
        memoryMib: build.memoryMib,
        readyClones: pooled.get(`${build.templateId}/${build.buildId}`) ?? 0,
      });
    }
    return cached;
  }

  /**
   * The report the monitor keeps in the host's view: capacity (disk: KILN_CAPACITY_DISK_MIB, else the data dir's
   * filesystem size) and usage (disk promised to the host's sandboxes, disk actually used on that filesystem,
   * creates in progress).
   */
  async report(): Promise<HostReport> {
    const [acceleration, templates, disk, promisedDiskMib] = await Promise.all([
      this.acceleration.accelerator(),
      this.cachedTemplates(),
      this.dataDisk(),
      this.sandboxDiskMib(),
    ]);
    const live = this.sandboxes.list();
    return {
      capacity: { ...this.sandboxes.capacity, diskMib: this.env.KILN_CAPACITY_DISK_MIB || disk.sizeMib },
      usage: {
        ...this.sandboxes.usage(),
        diskMib: promisedDiskMib,
        diskUsedMib: disk.usedMib,
        starting: live.filter((s) => s.state === 'starting').length,
      },
      templates: templates.map((t) => t.templateId),
      readyCloneTemplates: templates.filter((t) => t.readyClones > 0).map((t) => t.templateId),
      sandboxIds: live.map((s) => s.record.sandboxId),
      acceleration,
      agentVersion: HOST_AGENT_VERSION,
    };
  }

  /** The machine, for the operator's node list (E2B's NodeDetail). */
  machine(): HostMachineInfo {
    const cores = cpus();
    return {
      cpuModelName: cores[0]?.model.trim() || 'unknown',
      cpuArchitecture: arch(),
      cpuCount: cores.length,
      memoryTotalMib: Math.floor(totalmem() / MIB),
    };
  }

  /**
   * Size and used space of KILN_DATA_DIR's filesystem (MiB). A failing statfs reports zeros (logged once per
   * distinct failure) rather than failing the heartbeat: liveness matters more than the disk figures.
   */
  async dataDisk(): Promise<{ sizeMib: number; usedMib: number }> {
    try {
      const fs = await statfs(this.env.KILN_DATA_DIR);
      this.lastDiskProblem = undefined;
      return { sizeMib: Math.floor((fs.blocks * fs.bsize) / MIB), usedMib: Math.ceil(((fs.blocks - fs.bfree) * fs.bsize) / MIB) };
    } catch (error) {
      const problem = describeError(error);
      if (problem !== this.lastDiskProblem) this.logger.warn(`cannot read the size of ${this.env.KILN_DATA_DIR}'s filesystem: ${problem}`);
      this.lastDiskProblem = problem;
      return { sizeMib: 0, usedMib: 0 };
    }
  }

  /**
   * Disk promised to the host's sandboxes (paused ones included: they keep their disk layer): each one's disk is as
   * large as its template build's rootfs. A build whose size cannot be read counts 0 and is tried again next time.
   */
  async sandboxDiskMib(): Promise<number> {
    let total = 0;
    for (const { record } of this.sandboxes.list()) total += await this.buildDiskMib(record.templateId, record.buildId);
    return total;
  }

  private async buildDiskMib(templateId: string, buildId: string): Promise<number> {
    const key = `${templateId}/${buildId}`;
    const known = this.templateDiskMib.get(key);
    if (known !== undefined) return known;
    try {
      const build = await this.templates.resolve(templateId, buildId);
      const bytes = build.rootfs.format === 'qcow2' ? await qcow2VirtualSize(build.rootfs.path) : (await stat(build.rootfs.path)).size;
      const mib = Math.ceil(bytes / MIB);
      this.templateDiskMib.set(key, mib);
      return mib;
    } catch {
      return 0;
    }
  }

  /** https when the proxy speaks internal mTLS (the gateway then presents its certificate), as it must in production. */
  get proxyUrl(): string {
    return `${internalTlsFilesOf(this.env) ? 'https' : 'http'}://${this.env.KILN_HOST_ADDRESS}:${this.env.PROXY_PORT}`;
  }

  get grpcAddress(): string {
    return `${this.env.KILN_HOST_ADDRESS}:${this.env.GRPC_PORT}`;
  }

  async describe(): Promise<HostInfoResponse> {
    const [accelerator, templates] = await Promise.all([this.acceleration.accelerator(), this.cachedTemplates()]);
    const usage = this.sandboxes.usage();
    const capacity = this.sandboxes.capacity;
    const slotStats = this.slots.stats();
    return {
      hostId: this.sandboxes.hostId,
      version: HOST_AGENT_VERSION,
      acceleration: accelerator === 'kvm' ? Acceleration.ACCELERATION_KVM : Acceleration.ACCELERATION_TCG,
      capacity: { ...capacity, networkSlots: slotStats.maxSlots },
      usage: { ...usage, networkSlots: slotStats.leased },
      templates: templates.map((t) => ({ ...t })),
      proxyUrl: this.proxyUrl,
    };
  }
}

/** The disk size a qcow2 image presents to its VM (its header's virtual size), not the file's size. */
async function qcow2VirtualSize(path: string): Promise<number> {
  const file = await open(path, 'r');
  try {
    const header = Buffer.alloc(32);
    await file.read(header, 0, 32, 0);
    if (header.readUInt32BE(0) !== QCOW2_MAGIC) throw new Error(`${path} is not a qcow2 image`);
    return Number(header.readBigUInt64BE(24));
  } finally {
    await file.close();
  }
}
