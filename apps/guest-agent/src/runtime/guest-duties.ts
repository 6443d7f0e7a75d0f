import { readFileSync } from 'node:fs';

export type GuestDutiesMode = 'auto' | 'on' | 'off';

/**
 * Whether this agent is the VM's own agent and must act on the machine: step the wall clock from /init and keep
 * itself out of the OOM killer's way. Both would be harmful on a developer's or CI host, so 'auto' says yes only
 * when running as root with tini as the parent process, which is how the VM image starts the agent and a host
 * never does. Tests pass --guest-duties off on top of that.
 */
export function guestDutiesEnabled(mode: GuestDutiesMode): boolean {
  if (mode !== 'auto') return mode === 'on';
  if (process.getuid?.() !== 0) return false;
  try {
    return readFileSync(`/proc/${process.ppid}/comm`, 'utf8').trim() === 'tini';
  } catch {
    return false;
  }
}
