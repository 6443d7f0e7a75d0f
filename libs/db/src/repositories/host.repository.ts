import { Injectable } from '@nestjs/common';
import type { Host } from '@prisma/client';
import { HostState } from '@kiln/contracts';
import { PrismaService } from '../prisma.service';

/** A host's row. The host monitor owns it: liveness and the KV view are its; this is the durable copy. */
export type HostRecord = Host;

/** The operator's intent for a host, kept across liveness changes (the `admin_state` column). */
export type HostAdminStateValue = 'ready' | 'draining' | 'cordoned';

export interface HostRegistrationRecord {
  hostId: string;
  address: string;
  proxyUrl: string;
  acceleration: string;
  version: string;
  vcpus: number;
  memoryMib: number;
  sandboxes: number;
  /** Disk for sandboxes (MiB); agents from before the fleet report none. */
  diskMib?: number;
  templates: string[];
  readyCloneTemplates: string[];
  /** sha256 hex of a newly issued host credential; undefined keeps the stored one. */
  credentialHash?: string;
  /** The host's effective state after this registration; `ready` unless given (a draining host stays draining). */
  state?: HostState;
  /** The operator's intent to record; undefined keeps the stored one (`ready` for a new host). */
  adminState?: HostAdminStateValue;
}

const UNIQUE_VIOLATION = 'P2002';

@Injectable()
export class HostRepository {
  constructor(private readonly prisma: PrismaService) {}

  /**
   * Creates or refreshes a host's row. A new host starts with admin state `ready`; a known one keeps its admin state
   * (the operator's intent outlives a re-registration).
   */
  async register(record: HostRegistrationRecord, at = new Date()): Promise<void> {
    const state = record.state ?? HostState.Ready;
    const previous = await this.prisma.host.findUnique({ where: { id: record.hostId }, select: { state: true } });
    const data = {
      address: record.address,
      proxyUrl: record.proxyUrl,
      acceleration: record.acceleration,
      version: record.version,
      vcpuCapacity: record.vcpus,
      memoryMibCapacity: record.memoryMib,
      sandboxCapacity: record.sandboxes,
      diskMibCapacity: record.diskMib ?? 0,
      cachedTemplates: record.templates,
      readyCloneTemplates: record.readyCloneTemplates,
      state,
      lastHeartbeatAt: at,
      ...(previous?.state !== state ? { stateChangedAt: at } : {}),
      ...(record.credentialHash !== undefined ? { credentialHash: record.credentialHash } : {}),
      ...(record.adminState !== undefined ? { adminState: record.adminState } : {}),
    };
    await this.prisma.host.upsert({ where: { id: record.hostId }, update: data, create: { id: record.hostId, ...data, stateChangedAt: at } });
  }

  /** Records a state transition (and, when given, the new admin state); false for an unknown host. */
  async setState(hostId: string, state: HostState, adminState?: HostAdminStateValue, at = new Date()): Promise<boolean> {
    const { count } = await this.prisma.host.updateMany({
      where: { id: hostId },
      data: { state, stateChangedAt: at, ...(adminState !== undefined ? { adminState } : {}) },
    });
    return count === 1;
  }

  /** The sha256 hex of the host's credential, undefined when it has none (never joined with a token, or removed). */
  async credentialHashOf(hostId: string): Promise<string | undefined> {
    const row = await this.prisma.host.findUnique({ where: { id: hostId }, select: { credentialHash: true } });
    return row?.credentialHash ?? undefined;
  }

  /** Records a join token's use; false when its nonce was used before (the token is one-time). */
  async useJoinToken(nonce: string, hostId: string, expiresAt: Date): Promise<boolean> {
    try {
      await this.prisma.hostJoinToken.create({ data: { nonce, hostId, expiresAt } });
      return true;
    } catch (error) {
      if ((error as { code?: string }).code === UNIQUE_VIOLATION) return false;
      throw error;
    }
  }

  get(hostId: string): Promise<HostRecord | null> {
    return this.prisma.host.findUnique({ where: { id: hostId } });
  }

  /** Every host ever registered, removed ones included (state `offline`). */
  listAll(): Promise<HostRecord[]> {
    return this.prisma.host.findMany({ orderBy: { id: 'asc' } });
  }

  /** Hosts whose state (as the host monitor last recorded it) is `ready`. */
  ready(): Promise<HostRecord[]> {
    return this.prisma.host.findMany({ where: { state: HostState.Ready }, orderBy: { id: 'asc' } });
  }

  /**
   * Takes a host out of the fleet: `offline`, without a credential (it must join again with a new token). The row
   * stays: sandboxes and snapshots refer to it.
   */
  async remove(hostId: string, at = new Date()): Promise<boolean> {
    const { count } = await this.prisma.host.updateMany({
      where: { id: hostId },
      data: { state: HostState.Offline, stateChangedAt: at, credentialHash: null },
    });
    return count === 1;
  }
}
