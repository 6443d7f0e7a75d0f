export const CLONE_POOL_OPTIONS = Symbol('CLONE_POOL_OPTIONS');

export interface ClonePoolOptions {
  /** Where clone directories live (`<dataDir>/clones`): VM state, serial log and disk layer of each clone. */
  dir: string;
  /** Restored clones kept ready per template build; 0 turns the pool off (every create restores on demand). */
  perTemplate: number;
  /** Template builds kept warm at once; the least recently used one is drained when another is wanted. */
  maxTemplates: number;
  /** A build nobody created a sandbox from for this long is drained. */
  idleMs: number;
  /**
   * Warm pooled clones before pausing them (see ClonePool.restore): creates are much faster, and a sandbox starts
   * with the memory its first commands would have cost it anyway (under TCG, their translations).
   */
  warm: boolean;
}

/** Network slots the pool can hold at once, on top of the sandboxes' own. */
export function clonePoolSlots(options: Pick<ClonePoolOptions, 'perTemplate' | 'maxTemplates'>): number {
  return options.perTemplate * options.maxTemplates;
}
