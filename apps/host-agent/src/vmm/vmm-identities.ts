import { randomBytes } from 'node:crypto';
import { link, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { VmIdentityExhaustedError } from './vmm.errors';

/** The uid and gid one VMM runs as once its devices are open; no other live VMM has them. */
export interface VmmIdentity {
  uid: number;
  gid: number;
}

/** The process a lease is held for: the agent while it starts the VMM, then the VMM itself. */
interface LeaseOwner {
  vmId: string;
  pid: number;
  /** Field 22 of /proc/<pid>/stat, so a reused pid does not keep a lease alive. */
  startTicks: string;
}

/**
 * Leases of the per-VM uids (gid = uid) from the configured range, one file per uid in `dir`. A lease names the
 * process it is held for and is valid while that process lives: a VMM that outlives the agent keeps its uid, a
 * restarted agent adopts it with the VM (the lease already names the VMM), and the lease of a VMM that died while no
 * agent watched is taken over by the next claim. Files rather than memory, because every process driving VMs on this
 * host (the agent, test harnesses, benchmarks) draws from the same range.
 */
export class VmmIdentityLeases {
  /** Where the next search starts: spread over the range so processes rarely contend for the same files. */
  private cursor: number;

  constructor(
    private readonly dir: string,
    private readonly base: number,
    private readonly count: number,
  ) {
    this.cursor = randomBytes(4).readUInt32BE(0) % count;
  }

  /** A uid no live VMM holds, leased to this process until bind() hands it to the VMM. */
  async claim(vmId: string): Promise<VmmIdentity> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const owner: LeaseOwner = { vmId, pid: process.pid, startTicks: (await processStartTicks(process.pid)) ?? '' };
    for (let tried = 0; tried < this.count; tried++) {
      const uid = this.base + ((this.cursor + tried) % this.count);
      if (await this.tryClaim(uid, owner)) {
        this.cursor = (this.cursor + tried + 1) % this.count;
        return { uid, gid: uid };
      }
    }
    throw new VmIdentityExhaustedError(
      `all ${this.count} VMM uids from ${this.base} are held by live VMMs: raise KILN_VMM_UID_COUNT`,
    );
  }

  /** Moves the lease to the VMM process now running as the identity, so it outlives this process with it. */
  async bind(identity: VmmIdentity, vmId: string, pid: number): Promise<void> {
    const owner: LeaseOwner = { vmId, pid, startTicks: (await processStartTicks(pid)) ?? '' };
    const path = this.leasePath(identity.uid);
    const partial = `${path}.${randomBytes(4).toString('hex')}.partial`;
    await writeFile(partial, JSON.stringify(owner));
    await rename(partial, path);
  }

  /** Ends the lease of a VMM that is gone (or never started); a lease since taken over by another VM is left alone. */
  async release(identity: VmmIdentity, vmId: string): Promise<void> {
    const path = this.leasePath(identity.uid);
    const owner = await readLease(path);
    if (owner && owner.vmId !== vmId) return;
    await rm(path, { force: true });
  }

  private leasePath(uid: number): string {
    return join(this.dir, String(uid));
  }

  private async tryClaim(uid: number, owner: LeaseOwner): Promise<boolean> {
    const path = this.leasePath(uid);
    // Written whole, then linked into place: link() fails if the lease exists, and a reader never sees half a lease.
    const partial = `${path}.${randomBytes(4).toString('hex')}.partial`;
    await writeFile(partial, JSON.stringify(owner));
    try {
      for (let attempt = 0; attempt < 2; attempt++) {
        try {
          await link(partial, path);
          return true;
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        }
        if (attempt > 0 || !(await this.isStale(path, uid))) return false;
        await rm(path, { force: true });
      }
      return false;
    } finally {
      await rm(partial, { force: true });
    }
  }

  /**
   * A lease whose process is gone, for a uid no process runs as: the uid is free again. (A VMM started by an agent
   * that died before bind() still runs as the uid under a lease naming the agent.)
   */
  private async isStale(path: string, uid: number): Promise<boolean> {
    const owner = await readLease(path);
    if (owner && owner.startTicks !== '' && (await processStartTicks(owner.pid)) === owner.startTicks) return false;
    return !(await uidHasProcesses(uid));
  }
}

async function readLease(path: string): Promise<LeaseOwner | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as LeaseOwner;
  } catch {
    return undefined;
  }
}

/** Whether any process has `uid` as its real or effective uid (QEMU after -runas is not dumpable: read its status). */
async function uidHasProcesses(uid: number): Promise<boolean> {
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const status = await readFile(`/proc/${entry}/status`, 'utf8').catch(() => '');
    const ids = /^Uid:\s+(\d+)\s+(\d+)/m.exec(status);
    if (ids && (Number(ids[1]) === uid || Number(ids[2]) === uid)) return true;
  }
  return false;
}

/** Start time of a process in clock ticks since boot, or undefined when it does not exist (or is a zombie). */
export async function processStartTicks(pid: number): Promise<string | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may contain spaces and parentheses; fields after it start at the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
    return fields[19];
  } catch {
    return undefined;
  }
}
