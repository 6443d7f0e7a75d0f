import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { runHostCommand } from '../host-command/host-command';

/** A disk a step builds on: the base rootfs (raw or qcow2) or a finished layer (qcow2). */
export interface ParentDisk {
  key: string;
  path: string;
  format: 'raw' | 'qcow2';
}

const KEY = /^[0-9a-f]{64}$/;
const COMPLETE_MARK = 'complete';

/**
 * The host's cache of step results: `<cache>/layers/<key>/disk.qcow2`, each a qcow2 overlay whose backing file is its
 * parent layer (the first one's is the base rootfs), plus a `complete` mark. A layer appears whole or not at all: it
 * is built in `<cache>/tmp/` and renamed into place with its mark. Layers are never written again once complete (a
 * build VM always writes a fresh overlay on top), so any number of later builds may share them.
 */
export class LayerStore {
  constructor(readonly root: string) {}

  get layersDir(): string {
    return join(this.root, 'layers');
  }

  get tmpDir(): string {
    return join(this.root, 'tmp');
  }

  diskOf(key: string): string {
    if (!KEY.test(key)) throw new Error(`invalid layer key ${JSON.stringify(key)}`);
    return join(this.layersDir, key, 'disk.qcow2');
  }

  /** The finished layer of `key`, or undefined when there is none (or only a partial one). */
  async find(key: string): Promise<ParentDisk | undefined> {
    const dir = join(this.layersDir, key);
    const [mark, disk] = await Promise.all([stat(join(dir, COMPLETE_MARK)).catch(() => undefined), stat(this.diskOf(key)).catch(() => undefined)]);
    return mark?.isFile() && disk?.isFile() ? { key, path: this.diskOf(key), format: 'qcow2' } : undefined;
  }

  /** A scratch dir for one build (VM run dirs, overlays, archives, the flattened rootfs). */
  async scratch(buildId: string): Promise<string> {
    // Short: a build VM's state dir lives below it, and its sockets' paths must fit a unix socket address.
    const dir = join(this.tmpDir, `${buildId.replace(/[^A-Za-z0-9]/g, '').slice(0, 12)}-${randomBytes(3).toString('hex')}`);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  /** A new qcow2 overlay at `path` over `parent` (absolute backing path: layers never move). */
  async createOverlay(path: string, parent: ParentDisk): Promise<void> {
    await runHostCommand('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', parent.format, '-b', resolve(parent.path), path], { timeoutMs: 60_000 });
    // Only root reads layers (the agent hands disks to VMMs before they drop privileges).
    await chmod(path, 0o600);
  }

  /**
   * Makes a finished overlay the layer of `key`. Another build that finished the same key first wins: its layer has
   * the same content by construction, and ours is dropped.
   */
  async promote(key: string, overlay: string): Promise<ParentDisk> {
    const final = join(this.layersDir, key);
    const partial = `${final}.partial-${randomBytes(4).toString('hex')}`;
    await mkdir(partial, { recursive: true });
    try {
      await rename(overlay, join(partial, 'disk.qcow2'));
      await writeFile(join(partial, COMPLETE_MARK), `${new Date().toISOString()}\n`);
      try {
        await rename(partial, final);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error;
        // An incomplete leftover under the final name (a crash between rename and mark cannot happen: the mark is
        // inside before the rename) is a finished layer of another build: keep it.
      }
    } finally {
      await rm(partial, { recursive: true, force: true });
    }
    return { key, path: this.diskOf(key), format: 'qcow2' };
  }

  /** Removes every build's scratch space and half-promoted layer (at agent start: nothing of a build survives it). */
  async removeLeftovers(): Promise<void> {
    await rm(this.tmpDir, { recursive: true, force: true });
    await mkdir(this.tmpDir, { recursive: true });
    for (const name of await readdir(this.layersDir).catch(() => [] as string[])) {
      if (name.includes('.partial-')) await rm(join(this.layersDir, name), { recursive: true, force: true });
    }
  }
}
