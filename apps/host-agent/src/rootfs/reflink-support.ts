import { randomBytes } from 'node:crypto';
import { rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Injectable } from '@nestjs/common';
import { runHostCommand } from '../host-command/host-command';

/**
 * Whether a filesystem can share extents between files. Answered by doing it: a tiny file is written and
 * reflink-copied in the directory itself, because mount options, kernel and mkfs flags all decide it and none of them
 * is reliable to read. The answer is cached per filesystem (device id).
 */
@Injectable()
export class ReflinkSupport {
  private readonly byDevice = new Map<number, Promise<boolean>>();

  async supported(dir: string): Promise<boolean> {
    const { dev } = await stat(dir);
    let answer = this.byDevice.get(dev);
    if (!answer) {
      answer = probe(dir);
      this.byDevice.set(dev, answer);
      // A probe that failed for a transient reason (e.g. ENOSPC) is retried next time rather than cached.
      answer.catch(() => this.byDevice.delete(dev));
    }
    return answer;
  }
}

async function probe(dir: string): Promise<boolean> {
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const original = join(dir, `.kiln-reflink-probe-${tag}`);
  const clone = `${original}.clone`;
  try {
    await writeFile(original, randomBytes(4096));
    const res = await runHostCommand('cp', ['--reflink=always', original, clone], { acceptExitCodes: [1], timeoutMs: 10_000 });
    return res.exitCode === 0;
  } finally {
    await rm(original, { force: true });
    await rm(clone, { force: true });
  }
}
