import { randomBytes } from 'node:crypto';
import { rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Inject, Injectable } from '@nestjs/common';
import { runHostCommand } from '../host-command/host-command';
import { ROOTFS_OPTIONS, type RootfsOptions } from './rootfs.options';

/**
 * Raw copies of qcow2 template disks, for drivers that need a raw image (reflink, copy). Made once per source and
 * kept next to it: a template's disk never changes, so the flattening stays valid for the template's lifetime and is
 * removed along with the template directory. Being on the source's filesystem is also what lets reflink share it.
 */
@Injectable()
export class FlattenedImages {
  private readonly inFlight = new Map<string, Promise<string>>();

  constructor(@Inject(ROOTFS_OPTIONS) private readonly options: RootfsOptions) {}

  static pathFor(qcow2Source: string): string {
    return join(dirname(qcow2Source), `${basename(qcow2Source)}.flat.raw`);
  }

  /** Path of the raw flattening of `qcow2Source`, creating it if needed (concurrent callers share one conversion). */
  rawOf(qcow2Source: string): Promise<string> {
    const target = FlattenedImages.pathFor(qcow2Source);
    let pending = this.inFlight.get(target);
    if (!pending) {
      pending = this.ensure(qcow2Source, target).finally(() => this.inFlight.delete(target));
      this.inFlight.set(target, pending);
    }
    return pending;
  }

  private async ensure(source: string, target: string): Promise<string> {
    // Templates are immutable by contract; should a source be rewritten in place anyway, its newer mtime retires
    // the stale flattening instead of silently serving old contents.
    const cached = await stat(target).catch(() => undefined);
    if (cached?.isFile() && cached.mtimeMs >= (await stat(source)).mtimeMs) return target;
    // Convert under a temporary name and rename: a crash mid-conversion never leaves a truncated "cached" image.
    const partial = `${target}.partial-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      await runHostCommand('qemu-img', ['convert', '-q', '-f', 'qcow2', '-O', 'raw', source, partial], {
        timeoutMs: this.options.commandTimeoutMs,
      });
      await rename(partial, target);
      return target;
    } finally {
      await rm(partial, { force: true });
    }
  }
}
