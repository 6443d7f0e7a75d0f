import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/** Where the host credential lives in the agent's data dir. */
export const HOST_CREDENTIAL_FILE = 'host-credential';

/**
 * The host credential the monitor issued for the agent's join token: the only proof of this host's identity once the
 * one-time token is spent, so it is written atomically (a crash mid-write never leaves half of it) and durably
 * (fsync of the file and of the directory entry) before the agent relies on it, readable by the agent's user only.
 */
export class HostCredentialStore {
  readonly path: string;

  constructor(dataDir: string) {
    this.path = join(dataDir, HOST_CREDENTIAL_FILE);
  }

  /** The stored credential; undefined when there is none yet (an empty file counts as none). */
  async read(): Promise<string | undefined> {
    try {
      const credential = (await readFile(this.path, 'utf8')).trim();
      return credential || undefined;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
  }

  async save(credential: string): Promise<void> {
    const dir = dirname(this.path);
    await mkdir(dir, { recursive: true });
    const tmp = `${this.path}.${process.pid}.tmp`;
    // A leftover temp file would keep its own mode under a plain open: start from none, and create it 0600.
    await rm(tmp, { force: true });
    const file = await open(tmp, 'wx', 0o600);
    try {
      await file.writeFile(`${credential}\n`);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(tmp, this.path);
    const directory = await open(dir, 'r');
    try {
      await directory.sync();
    } finally {
      await directory.close();
    }
  }
}
