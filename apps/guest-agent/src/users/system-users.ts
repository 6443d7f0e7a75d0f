import { readFileSync, statSync } from 'node:fs';

/** A local account as the process and file services need it: ids for setuid/chown, home for `~` and default cwd. */
export interface SystemUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  readonly home: string;
  readonly shell: string;
  /** Every group id the user belongs to (primary first), for permission checks. */
  readonly groups: readonly number[];
}

export class UnknownUserError extends Error {
  constructor(readonly username: string) {
    super(`error looking up user '${username}': user: unknown user ${username}`);
  }
}

/**
 * Reads /etc/passwd and /etc/group, re-parsing whenever a file changed (mtime, size or inode): users created by
 * commands in the sandbox (useradd) are visible at once, while listing a large directory, which names an owner
 * and group per entry, costs one stat per lookup rather than a read and parse.
 */
export class SystemUserDirectory {
  private readonly parsed = new Map<string, { key: string; lines: string[] }>();

  constructor(
    private readonly passwdPath = '/etc/passwd',
    private readonly groupPath = '/etc/group',
  ) {}

  lookup(name: string): SystemUser {
    const line = this.readLines(this.passwdPath).find((l) => l.split(':', 1)[0] === name);
    if (!line) throw new UnknownUserError(name);
    const [, , uid, gid, , home, shell] = line.split(':');
    const primaryGid = Number(gid);
    const groups = [primaryGid];
    for (const groupLine of this.readLines(this.groupPath)) {
      const [, , id, members] = groupLine.split(':');
      if (members && members.split(',').includes(name) && !groups.includes(Number(id))) groups.push(Number(id));
    }
    return { name, uid: Number(uid), gid: primaryGid, home: home || '/', shell: shell || '/bin/sh', groups };
  }

  userNameOf(uid: number): string {
    return this.nameById(this.passwdPath, uid) ?? String(uid);
  }

  groupNameOf(gid: number): string {
    return this.nameById(this.groupPath, gid) ?? String(gid);
  }

  private nameById(path: string, id: number): string | undefined {
    const idText = String(id);
    const line = this.readLines(path).find((l) => l.split(':')[2] === idText);
    return line?.split(':', 1)[0];
  }

  private readLines(path: string): string[] {
    try {
      const info = statSync(path);
      const key = `${info.ino}:${info.size}:${info.mtimeMs}`;
      const cached = this.parsed.get(path);
      if (cached?.key === key) return cached.lines;
      const lines = readFileSync(path, 'utf8').split('\n').filter((l) => l && !l.startsWith('#'));
      this.parsed.set(path, { key, lines });
      return lines;
    } catch {
      return [];
    }
  }
}
