import { existsSync } from 'node:fs';

/** util-linux's setpriv, present in every Debian-based image (util-linux is essential). */
const SETPRIV = '/usr/bin/setpriv';

export interface LaunchPlan {
  file: string;
  args: string[];
  /** Set when the spawn itself should switch user (no supplementary groups to carry over). */
  uid?: number;
  gid?: number;
}

/**
 * How to exec `cmd` as a user. Node's spawn can set uid and gid but drops every supplementary group (libuv calls
 * setgroups(0)), while envd runs commands with the user's full group list (docker, sudo...). When the user has
 * supplementary groups, the agent (root) execs through setpriv, which sets all three and then execs the command
 * in place, so the pid the caller sees is the command's.
 */
export function launchPlan(cmd: string, args: string[], uid: number, gid: number, groups: readonly number[]): LaunchPlan {
  const supplementary = groups.filter((g) => g !== gid);
  if (uid !== 0 && supplementary.length > 0 && process.getuid?.() === 0 && existsSync(SETPRIV)) {
    return {
      file: SETPRIV,
      args: [`--reuid=${uid}`, `--regid=${gid}`, `--groups=${[gid, ...supplementary].join(',')}`, '--', cmd, ...args],
    };
  }
  return { file: cmd, args, uid, gid };
}
