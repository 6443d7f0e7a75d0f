import { readFile, rename, writeFile } from 'node:fs/promises';

const RESOLV_CONF = '/etc/resolv.conf';

/**
 * Writes the guest's /etc/resolv.conf from the resolvers the host sends in /init. Only with guest duties on
 * (see guest-duties.ts): on a host the list is validated and dropped.
 *
 * /init sits on every create's path, and right after a restore each new guest code path costs TCG a
 * translation, so unchanged content is not touched: the content this agent last wrote or read is remembered,
 * and a clone inherits that memory from its template, whose warm-up wrote the host's resolvers before the
 * snapshot. A sandbox user's own edit of the file therefore survives a re-/init with the same resolvers.
 */
export class ResolverConfig {
  /** What the file is known to hold: written or read by this agent. */
  private known: string | undefined;

  constructor(
    private readonly enabled: boolean,
    private readonly path: string = RESOLV_CONF,
  ) {}

  /** Returns whether the file was (re)written. */
  async apply(nameservers: readonly string[]): Promise<boolean> {
    if (!this.enabled) return false;
    const content = `# Written by the Kiln guest agent from the sandbox's host settings.\n${nameservers.map((ip) => `nameserver ${ip}\n`).join('')}`;
    if (this.known === content) return false;
    if ((await readFile(this.path, 'utf8').catch(() => undefined)) === content) {
      this.known = content;
      return false;
    }
    // Replaced, not edited in place: a reader never sees half a file.
    const partial = `${this.path}.kiln-partial`;
    await writeFile(partial, content, { mode: 0o644 });
    await rename(partial, this.path);
    this.known = content;
    return true;
  }
}
