/**
 * What the sandbox manager needs from the template/snapshot layer: a verified,
 * restorable snapshot per template. The snapshot module provides it.
 */
export interface RestorableSnapshot {
  templateId: string;
  buildId: string;
  vcpus: number;
  memoryMib: number;
  kernelPath: string;
  initrdPath: string;
  kernelArgs: string;
  /** Guest RAM at snapshot time; clones map it private (copy-on-write), never writing it. */
  memoryPath: string;
  /** Device state (x-ignore-shared migration stream). */
  statePath: string;
  /** The disk exactly as the snapshot saw it; sandbox layers are made on top of it. */
  disk: { path: string; format: 'raw' | 'qcow2' };
}

export interface CachedTemplateInfo {
  templateId: string;
  buildId: string;
  snapshotReady: boolean;
  vcpus: number;
  memoryMib: number;
}

export interface SnapshotSource {
  /** Resolves the template's current build to a ready snapshot (making it on first use); throws TemplateNotFoundError. */
  ready(templateId: string, buildId?: string): Promise<RestorableSnapshot>;
  cached(): Promise<CachedTemplateInfo[]>;
}

export const SNAPSHOT_SOURCE = Symbol('SNAPSHOT_SOURCE');

export class TemplateNotFoundError extends Error {
  constructor(templateId: string, detail?: string) {
    super(`template ${templateId} is not available on this host${detail ? `: ${detail}` : ''}`);
    this.name = 'TemplateNotFoundError';
  }
}
