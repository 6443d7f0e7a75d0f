import { mkdir } from 'node:fs/promises';
import { dirname, posix } from 'node:path';
import { BaseLayerToolError } from './base-layers.errors';
import { runTool } from './tool-runner';

/**
 * Reading files out of a raw ext4 image with debugfs (userspace; images are never mounted on the host). debugfs
 * exits 0 even when a request fails, so every read is checked by its result.
 */
export class Ext4Reader {
  constructor(
    private readonly image: string,
    private readonly signal: AbortSignal,
  ) {}

  /** `stat` of a path (intermediate symlinks followed by debugfs), or undefined when it does not exist. */
  async stat(path: string): Promise<{ type: string; linkTarget?: string } | undefined> {
    const { stdout, stderr } = await this.debugfs(`stat ${quote(path)}`);
    const type = /Type: (\S+)/.exec(stdout)?.[1];
    if (!type) {
      if (/not found|File not found/i.test(stderr)) return undefined;
      throw new BaseLayerToolError(`debugfs stat ${path} in ${this.image}: ${stderr.trim()}`);
    }
    const linkTarget = /Fast link dest: "(.*)"/.exec(stdout)?.[1];
    return { type, linkTarget };
  }

  /** `path` with every symlink of its last component followed (the path debugfs can `dump`). */
  async resolve(path: string): Promise<string | undefined> {
    let current = path;
    for (let hops = 0; hops < 16; hops++) {
      const info = await this.stat(current);
      if (!info) return undefined;
      if (info.type !== 'symlink') return current;
      if (info.linkTarget === undefined) throw new BaseLayerToolError(`${this.image}: ${current} is a long symlink (not supported)`);
      current = info.linkTarget.startsWith('/') ? info.linkTarget : posix.join(posix.dirname(current), info.linkTarget);
    }
    throw new BaseLayerToolError(`${this.image}: symlink loop at ${path}`);
  }

  /** Copies a regular file out (symlinks followed). */
  async dumpFile(path: string, dest: string): Promise<void> {
    const real = await this.resolve(path);
    if (!real) throw new BaseLayerToolError(`${this.image} has no ${path}`);
    await mkdir(dirname(dest), { recursive: true });
    const { stderr } = await this.debugfs(`dump -p ${quote(real)} ${quote(dest)}`);
    if (/error|not found|short read/i.test(stderr)) throw new BaseLayerToolError(`debugfs dump ${path}: ${stderr.trim()}`);
  }

  /** Copies a directory tree out into `destParent/<basename>`, owners and modes kept. */
  async dumpTree(path: string, destParent: string): Promise<void> {
    await mkdir(destParent, { recursive: true });
    const { stderr } = await this.debugfs(`rdump ${quote(path)} ${quote(destParent)}`);
    if (/error|not found/i.test(stderr)) throw new BaseLayerToolError(`debugfs rdump ${path}: ${stderr.trim()}`);
  }

  private debugfs(request: string) {
    return runTool('debugfs', ['-R', request, this.image], { signal: this.signal, timeoutMs: 10 * 60_000 });
  }
}

/** debugfs parses its request line itself: paths with spaces or quotes go in double quotes. */
function quote(path: string): string {
  if (/["\n]/.test(path)) throw new BaseLayerToolError(`unsupported path for debugfs: ${JSON.stringify(path)}`);
  return `"${path}"`;
}
