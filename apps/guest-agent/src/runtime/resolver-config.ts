import { readFile, rename, writeFile } from 'node:fs/promises';

const RESOLV_CONF = '/etc/resolv.conf';

/**
 * Writes the guest's /etc/resolv.conf from the resolvers the host sends in /init. Only with guest duties on
 * (see guest-duties.ts): on a host the list is validated and dropped. Unchanged content is not rewritten, so a
 * create whose host sends what the template already has costs a read, not a write to the sandbox's disk.
 */
export class ResolverConfig {
  constructor(private readonly enabled: boolean) {}

  /** Returns whether the file was (re)written. */
  async apply(nameservers: readonly string[]): Promise<boolean> {
    if (!this.enabled) return false;
    const content = `# Written by the Kiln guest agent from the sandbox's host settings.\n${nameservers.map((ip) => `nameserver ${ip}\n`).join('')}`;
    if ((await readFile(RESOLV_CONF, 'utf8').catch(() => undefined)) === content) return false;
    // Replaced, not edited in place: a reader never sees half a file.
    const partial = `${RESOLV_CONF}.kiln-partial`;
    await writeFile(partial, content, { mode: 0o644 });
    await rename(partial, RESOLV_CONF);
    return true;
  }
}
