import { writeFileSync } from 'node:fs';

/** The agent is what the host talks to: when memory runs out in the guest, the user's processes must go first. */
const AGENT_OOM_SCORE_ADJ = -1000;
/** What user processes get back (the kernel default is 0; envd uses 100 so they are preferred victims). */
export const USER_PROCESS_OOM_SCORE_ADJ = 100;

/**
 * Protects the agent from the OOM killer. Children inherit oom_score_adj, so once this is on every user process is
 * started through a tiny shell prefix that raises its own score back before exec'ing the command (raising needs
 * no privilege, so it works after the switch to the user).
 */
export class OomPolicy {
  private protectedSelf = false;

  constructor(private readonly enabled: boolean) {}

  apply(): void {
    if (!this.enabled) return;
    try {
      writeFileSync('/proc/self/oom_score_adj', String(AGENT_OOM_SCORE_ADJ));
      this.protectedSelf = true;
    } catch (err) {
      process.stderr.write(`guest-agent: cannot set oom_score_adj: ${(err as Error).message}\n`);
    }
  }

  /** True when children must reset their score (the agent's -1000 would otherwise be inherited). */
  get childrenNeedReset(): boolean {
    return this.protectedSelf;
  }
}
