import { existsSync } from 'node:fs';
import { USER_PROCESS_OOM_SCORE_ADJ } from '../runtime/oom-policy';

/** util-linux's setpriv, present in every Debian-based image (util-linux is essential). */
const SETPRIV = '/usr/bin/setpriv';

export interface LaunchPlan {
  file: string;
  args: string[];
  /** Set when the spawn itself should switch user (no supplementary groups to carry over). */
  uid?: number;
  gid?: number;
}

export interface LaunchIdentity {
  uid: number;
  gid: number;
  groups: readonly number[];
  /** Raise oom_score_adj back from the agent's protected value before exec'ing the command. */
  resetOomScore: boolean;
}

/**
 * How to exec `cmd` as a user. Node's spawn can set uid and gid but drops every supplementary group (libuv calls
 * setgroups(0)), while envd runs commands with the user's full group list (docker, sudo...). When the user has
 * supplementary groups, the agent (root) execs through setpriv, which sets all three. Every prefix here ends in
 * exec, so the pid the caller sees is the command's own.
 */
export function launchPlan(cmd: string, args: string[], who: LaunchIdentity): LaunchPlan {
  const supplementary = who.groups.filter((g) => g !== who.gid);
  let plan: LaunchPlan = { file: cmd, args, uid: who.uid, gid: who.gid };
  if (who.uid !== 0 && supplementary.length > 0 && process.getuid?.() === 0 && existsSync(SETPRIV)) {
    plan = {
      file: SETPRIV,
      args: [`--reuid=${who.uid}`, `--regid=${who.gid}`, `--groups=${[who.gid, ...supplementary].join(',')}`, '--', cmd, ...args],
    };
  }
  if (who.resetOomScore) {
    plan = {
      file: '/bin/sh',
      args: ['-c', `echo ${USER_PROCESS_OOM_SCORE_ADJ} > /proc/self/oom_score_adj; exec "$@"`, 'sh', plan.file, ...plan.args],
      uid: plan.uid,
      gid: plan.gid,
    };
  }
  return plan;
}
