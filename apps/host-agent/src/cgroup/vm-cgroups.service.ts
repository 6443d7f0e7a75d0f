import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Inject, Injectable, Logger, Optional, type OnModuleInit } from '@nestjs/common';
import type { CgroupBackend, CgroupLimits } from './cgroup-backend';
import { detectCgroupHost, v1Usable, v2Usable, type CgroupHost } from './cgroup-detect';
import { CgroupV1, V1_CONTROLLERS, type V1Controller } from './cgroup-v1';
import { CgroupV2 } from './cgroup-v2';
import { CgroupSetupError, CgroupUnavailableError } from './cgroup.errors';
import { VmCgroupsConfig } from './vm-cgroups.config';

/** Injection token for a backend chosen by the caller instead of by detection (tests). */
export const CGROUP_BACKEND = Symbol('CGROUP_BACKEND');
/** Injection token for the host's cgroup layout instead of reading /proc/self (tests). */
export const CGROUP_HOST = Symbol('CGROUP_HOST');

/** Period of the CFS bandwidth limit: the kernel default, short enough that a throttled VMM is not visibly jerky. */
export const CPU_PERIOD_US = 100_000;
/** Every VM group's name starts with it: start-up reconciliation considers only such children of the parent. */
export const VM_GROUP_PREFIX = 'vm-';
const REMOVE_ATTEMPTS = 50;
const REMOVE_RETRY_MS = 20;
/**
 * At start-up, a VM group younger than this may be being set up by another process sharing the parent (tools with
 * the default kiln-vmm), between creating it and moving its VMM in: not a leftover yet.
 */
const FRESH_GROUP_MS = 30_000;

export interface VmResources {
  vcpus: number;
  memoryMib: number;
  accelerator: 'kvm' | 'tcg';
}

/** A VM's group, created with its limits, waiting for the VMM's pid. */
export interface VmCgroupPlacement {
  readonly name: string;
  readonly limits: CgroupLimits;
  /** Moves the VMM in; synchronous so it happens before the VMM gets far (see CgroupBackend.enterSync). */
  enterSync(pid: number): void;
}

/**
 * One cgroup per VM under a parent per agent (kiln-<network prefix>): a VMM may use at most its vCPUs' worth of
 * CPU, its guest RAM plus a measured overhead, and a bounded number of tasks, so one sandbox cannot starve the host
 * or its neighbours. The driver creates the group before spawning QEMU, moves the pid in straight after, and
 * releases the group when the VMM exits; start-up removes the empty groups a previous run left behind.
 */
@Injectable()
export class VmCgroups implements OnModuleInit {
  private readonly logger = new Logger(VmCgroups.name);
  private started: Promise<CgroupBackend | undefined> | undefined;
  private detectedHost: Promise<CgroupHost> | undefined;
  /** The pid (undefined until entered) each group was made for: a late release must not remove a successor's group. */
  private readonly owners = new Map<string, number | undefined>();
  private warnedNoJailerParent = false;

  constructor(
    @Inject(VmCgroupsConfig) private readonly config: VmCgroupsConfig,
    @Optional() @Inject(CGROUP_BACKEND) private readonly backendOverride?: CgroupBackend,
    @Optional() @Inject(CGROUP_HOST) private readonly hostOverride?: CgroupHost,
  ) {}

  async onModuleInit(): Promise<void> {
    await this.backend();
  }

  /** 'off' when VMs run without limits (KILN_VMM_CGROUP=off, or auto on a host with neither version usable). */
  async version(): Promise<'v2' | 'v1' | 'off'> {
    return (await this.backend())?.version ?? 'off';
  }

  limitsFor(vm: VmResources): CgroupLimits {
    const overheadMib = this.config.memoryOverheadMib + (vm.accelerator === 'tcg' ? this.config.tcgTranslationBufferMib : 0);
    return {
      cpuQuotaUs: Math.round(((vm.vcpus * 100 + this.config.cpuHeadroomPercent) * CPU_PERIOD_US) / 100),
      cpuPeriodUs: CPU_PERIOD_US,
      memoryBytes: (vm.memoryMib + overheadMib) * 1024 * 1024,
      pidsMax: vm.vcpus + this.config.pidsMargin,
    };
  }

  /** Creates the VM's group with its limits; undefined when cgroups are off. */
  async prepare(vmId: string, vm: VmResources): Promise<VmCgroupPlacement | undefined> {
    const backend = await this.backend();
    if (!backend) return undefined;
    const name = vmGroupName(vmId);
    const limits = this.limitsFor(vm);
    try {
      await backend.create(name, limits).catch(async (error: NodeJS.ErrnoException) => {
        if (error.code !== 'ENOENT') throw error;
        // The parent went (host teardown, an operator): made again, with its controllers.
        await backend.ensureParent();
        await backend.create(name, limits);
      });
    } catch (error) {
      await backend.remove(name).catch(() => false);
      throw new CgroupSetupError(`vm ${vmId}: cannot create its cgroup: ${(error as Error).message}`);
    }
    this.owners.set(name, undefined);
    return {
      name,
      limits,
      enterSync: (pid: number) => {
        try {
          backend.enterSync(name, pid);
        } catch (error) {
          throw new CgroupSetupError(`vm ${vmId}: cannot move pid ${pid} into its cgroup: ${(error as Error).message}`);
        }
        this.owners.set(name, pid);
      },
    };
  }

  /**
   * The parent for Firecracker's jailer (--parent-cgroup): a path relative to each hierarchy's mount, under which
   * the jailer creates `<mount>/<parent>/<id>`. With the jailer id being the VM's group name, that is exactly the
   * group this class would have made, so release() and start-up reconciliation treat it as one of its own.
   * Undefined when cgroups are off, or under `auto` on a v1 host where the jailer cannot reach this class's parent.
   */
  async jailerParent(): Promise<string | undefined> {
    const backend = await this.backend();
    if (!backend) return undefined;
    const placement = jailerParentFor(backend.version, this.config.parent, await this.host());
    if ('parent' in placement) return placement.parent;
    // An explicit KILN_VMM_CGROUP=v1 promises limits on every VM: refusing the VM keeps that promise. Under auto a
    // VM without limits is what this host gets anyway when it has no usable cgroups, so Firecracker VMs degrade the
    // same way (QEMU VMs, which VmCgroups places itself, keep their limits) and the operator is told once.
    if (this.config.mode === 'v1') throw new CgroupSetupError(`KILN_VMM_CGROUP=v1 but the Firecracker jailer cannot place VMs here: ${placement.refused}`);
    if (!this.warnedNoJailerParent) {
      this.warnedNoJailerParent = true;
      this.logger.warn(`Firecracker VMs run without a jailer cgroup (no per-VM limits) on this host: ${placement.refused}`);
    }
    return undefined;
  }

  /** Records the group of a VM this process did not start (adopted after a restart), so its exit releases it. */
  adopted(vmId: string, pid: number): void {
    this.recordGroupOwner(vmGroupName(vmId), pid);
  }

  /**
   * Records `pid` as the process the group `name` holds when this class did not make it (the Firecracker jailer
   * does; or the VM was adopted after a restart): releaseGroup() then removes it only for that pid, so a late
   * release of an earlier VM of the same name leaves its successor's group alone.
   */
  recordGroupOwner(name: string, pid: number): void {
    this.owners.set(name, pid);
  }

  /**
   * Removes the VM's group once its VMM `pid` is gone. Helpers the VMM left behind (a snapshot writer) are killed
   * first: the group is the VM's, nothing else runs in it. A group since taken by a VM of the same id is left alone.
   */
  async release(vmId: string, pid: number | undefined): Promise<void> {
    await this.releaseGroup(vmGroupName(vmId), pid);
  }

  /** release() for a group known by its name (the Firecracker jailer's: its --id). */
  async releaseGroup(name: string, pid: number | undefined): Promise<void> {
    const backend = await this.backend().catch(() => undefined);
    if (!backend) return;
    if (this.owners.has(name) && this.owners.get(name) !== pid) return;
    this.owners.delete(name);
    for (let attempt = 0; attempt < REMOVE_ATTEMPTS; attempt++) {
      for (const leftover of await backend.processes(name)) {
        try {
          process.kill(leftover, 'SIGKILL');
        } catch {
          /* exited meanwhile */
        }
      }
      // EBUSY while the killed tasks finish exiting.
      if (await backend.remove(name).catch(() => false)) return;
      await delay(REMOVE_RETRY_MS);
    }
    // Start-up reconciliation removes it once empty.
    this.logger.warn(`cgroup ${backend.paths(name).join(', ')} is still busy; left for the next start`);
  }

  /**
   * Empty VM groups under the parent are leftovers of VMs that died while no agent ran: removed. Busy ones are kept,
   * and so are groups younger than `minAgeMs` (see FRESH_GROUP_MS). Runs at start-up.
   */
  async reconcile(minAgeMs = FRESH_GROUP_MS): Promise<{ removed: string[]; kept: string[] }> {
    const backend = await this.backend();
    return backend ? reconcileGroups(backend, minAgeMs) : { removed: [], kept: [] };
  }

  /**
   * Host teardown, once every VM of the agent is gone: removes the empty VM groups and the parent. Groups that
   * still hold processes are kept (and so is the parent). Resolves whether everything went.
   */
  async removeAll(): Promise<boolean> {
    const backend = await this.backend();
    if (!backend) return true;
    const { kept } = await reconcileGroups(backend, 0);
    return kept.length === 0 && (await backend.removeParent());
  }

  /** The VM's group directories (one per v1 hierarchy); [] when cgroups are off. */
  async paths(vmId: string): Promise<string[]> {
    return (await this.backend())?.paths(vmGroupName(vmId)) ?? [];
  }

  async limitsOf(vmId: string): Promise<CgroupLimits | undefined> {
    return (await this.backend())?.readLimits(vmGroupName(vmId));
  }

  async processesOf(vmId: string): Promise<number[]> {
    return (await this.backend())?.processes(vmGroupName(vmId)) ?? [];
  }

  private backend(): Promise<CgroupBackend | undefined> {
    this.started ??= this.start();
    return this.started;
  }

  private host(): Promise<CgroupHost> {
    this.detectedHost ??= this.hostOverride ? Promise.resolve(this.hostOverride) : detectCgroupHost();
    return this.detectedHost;
  }

  private async start(): Promise<CgroupBackend | undefined> {
    const backend = this.backendOverride ?? selectBackend(this.config, await this.host());
    if (!backend) {
      if (this.config.mode === 'auto') {
        this.logger.warn('no usable cgroup v2 or v1 controllers (cpu, memory, pids): VMs run without per-VM limits');
      }
      return undefined;
    }
    await backend.ensureParent();
    const { removed, kept } = await reconcileGroups(backend, FRESH_GROUP_MS);
    this.logger.log(
      `per-VM cgroup ${backend.version} under ${backend.parentPaths.join(', ')}` +
        (removed.length + kept.length > 0 ? `: removed ${removed.length} empty group(s), kept ${kept.length} busy` : ''),
    );
    return backend;
  }
}

export function selectBackend(config: VmCgroupsConfig, host: CgroupHost): CgroupBackend | undefined {
  const { mode, parent } = config;
  if (mode === 'off') return undefined;
  if ((mode === 'auto' || mode === 'v2') && v2Usable(host)) return new CgroupV2(host.v2!.mountPath, parent);
  if ((mode === 'auto' || mode === 'v1') && v1Usable(host)) {
    const parents = Object.fromEntries(
      V1_CONTROLLERS.map((controller) => [controller, join(host.v1Mounts[controller]!, host.v1OwnPaths[controller] ?? '/', parent)]),
    ) as Record<V1Controller, string>;
    return new CgroupV1(parents);
  }
  if (mode === 'auto') return undefined;
  const found = host.v2 ? `cgroup2 at ${host.v2.mountPath} with [${host.v2.controllers.join(' ')}]` : 'no cgroup2 mount';
  const v1 = Object.keys(host.v1Mounts).join(', ') || 'none';
  throw new CgroupUnavailableError(`KILN_VMM_CGROUP=${mode} but this host has ${found}; v1 controllers: ${v1}`);
}

/**
 * Where the jailer's `--parent-cgroup` must point for its `<mount>/<parent>/<id>` to land in selectBackend's parent:
 * v2 keeps the parent at the mount's top; v1 keeps it under the agent's own group in each hierarchy, and the jailer
 * takes one parent for every controller, so that works only when the agent's group is the same path in the cpu,
 * memory and pids hierarchies. The jailer refuses an absolute parent: the result has no leading '/'.
 */
export function jailerParentFor(version: 'v2' | 'v1', parent: string, host: CgroupHost): { parent: string } | { refused: string } {
  if (version === 'v2') return { parent: relativeToMount(parent) };
  const ownPaths = V1_CONTROLLERS.map((controller) => host.v1OwnPaths[controller] ?? '/');
  if (new Set(ownPaths.map((own) => join('/', own))).size > 1) {
    const groups = V1_CONTROLLERS.map((controller, i) => `${controller} ${ownPaths[i]}`).join(', ');
    return {
      refused: `the agent's cgroup v1 groups differ per controller (${groups}) and the jailer takes one --parent-cgroup for all of them`,
    };
  }
  return { parent: relativeToMount(join(ownPaths[0]!, parent)) };
}

function relativeToMount(path: string): string {
  return join('/', path).slice(1);
}

async function reconcileGroups(backend: CgroupBackend, minAgeMs: number): Promise<{ removed: string[]; kept: string[] }> {
  const removed: string[] = [];
  const kept: string[] = [];
  for (const name of await backend.children()) {
    if (!name.startsWith(VM_GROUP_PREFIX)) continue;
    // Another process sharing the parent (a second tool with the default one) may be between creating a group and
    // moving its VMM in: a group that new is not a leftover.
    const ages = await Promise.all(backend.paths(name).map((dir) => stat(dir).then((s) => Date.now() - s.ctimeMs, () => Infinity)));
    if (Math.min(...ages) < minAgeMs) {
      kept.push(name);
      continue;
    }
    if ((await backend.processes(name)).length > 0 || !(await backend.remove(name))) kept.push(name);
    else removed.push(name);
  }
  return { removed, kept };
}

/** The name VmCgroups gives a VM's group (the Firecracker driver's jailer id too, when the jailer accepts it). */
export function vmGroupName(vmId: string): string {
  return `${VM_GROUP_PREFIX}${vmId}`;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
