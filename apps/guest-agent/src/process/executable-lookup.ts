import { constants } from 'node:fs';
import { statSync } from 'node:fs';
import { delimiter, isAbsolute, join, resolve } from 'node:path';

/**
 * Finds what exec would run for `cmd` (a path, or a name searched in PATH) and checks the user may execute it.
 * Done before spawning so a missing or non-executable command is a clear InvalidArgument on every launch path,
 * including the wrapped ones where exec happens inside a helper and would only show up as exit status 127.
 */
export function findExecutable(cmd: string, cwd: string, pathVar: string, uid: number, groups: readonly number[]): string | undefined {
  const candidates = cmd.includes('/')
    ? [isAbsolute(cmd) ? cmd : resolve(cwd, cmd)]
    : pathVar.split(delimiter).filter(Boolean).map((dir) => join(dir, cmd));
  for (const candidate of candidates) {
    try {
      // Synchronous on purpose: a few stats of local files cost microseconds, less than a thread-pool round trip,
      // and this sits on the latency path of every command start.
      const info = statSync(candidate);
      if (info.isFile() && mayExecute(info.mode, info.uid, info.gid, uid, groups)) return candidate;
    } catch {
      // Not here; try the next PATH entry.
    }
  }
  return undefined;
}

function mayExecute(mode: number, ownerUid: number, ownerGid: number, uid: number, groups: readonly number[]): boolean {
  const anyExec = constants.S_IXUSR | constants.S_IXGRP | constants.S_IXOTH;
  if (uid === 0) return (mode & anyExec) !== 0;
  if (ownerUid === uid) return (mode & constants.S_IXUSR) !== 0;
  if (groups.includes(ownerGid)) return (mode & constants.S_IXGRP) !== 0;
  return (mode & constants.S_IXOTH) !== 0;
}
