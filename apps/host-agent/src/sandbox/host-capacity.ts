import { cpus, totalmem } from 'node:os';
import { HostAgentEnv } from '@kiln/config';

/**
 * Idle sandboxes share template pages and mostly sleep, so vCPUs and memory are
 * overcommitted by default; explicit KILN_CAPACITY_* settings replace the guesses.
 */
const VCPU_OVERCOMMIT = 8;
const MEMORY_SHARE_OF_HOST = 0.8;

export interface HostCapacity {
  vcpus: number;
  memoryMib: number;
  sandboxes: number;
}

export function hostCapacityFrom(env: HostAgentEnv): HostCapacity {
  return {
    vcpus: env.KILN_CAPACITY_VCPUS || cpus().length * VCPU_OVERCOMMIT,
    memoryMib: env.KILN_CAPACITY_MEMORY_MIB || Math.floor((totalmem() / 1024 / 1024) * MEMORY_SHARE_OF_HOST),
    sandboxes: env.KILN_MAX_SANDBOXES,
  };
}
