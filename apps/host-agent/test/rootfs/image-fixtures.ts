import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, open, rm, rmdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runHostCommand } from '../../src/host-command/host-command';

export const MiB = 1024 * 1024;

export async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * A raw disk image of `sizeMiB` whose first `randomMiB` are random (so content changes are detectable), followed by
 * one MiB of the byte 0xcd at `markerOffsetMiB`, and holes everywhere else.
 */
export async function makeRawImage(path: string, sizeMiB: number, randomMiB: number, markerOffsetMiB: number): Promise<void> {
  const file = await open(path, 'w');
  try {
    await file.truncate(sizeMiB * MiB);
    for (let i = 0; i < randomMiB; i++) await file.write(randomBytes(MiB), 0, MiB, i * MiB);
    await file.write(Buffer.alloc(MiB, 0xcd), 0, MiB, markerOffsetMiB * MiB);
    await file.sync();
  } finally {
    await file.close();
  }
}

/** Writes `length` bytes of `byte` at `offset` into a raw file, durably. */
export async function writeRaw(path: string, offset: number, length: number, byte: number): Promise<void> {
  const file = await open(path, 'r+');
  try {
    await file.write(Buffer.alloc(length, byte), 0, length, offset);
    await file.sync();
  } finally {
    await file.close();
  }
}

export async function readRaw(path: string, offset: number, length: number): Promise<Buffer> {
  const file = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    await file.read(buf, 0, length, offset);
    return buf;
  } finally {
    await file.close();
  }
}

/** Runs qemu-io commands (e.g. `write -P 0xab 4M 1M`) against an image; qemu-io reports failed verifies in its output. */
export async function qemuIo(path: string, format: string, command: string): Promise<string> {
  const { stdout } = await runHostCommand('qemu-io', ['-f', format, '-c', command, path]);
  if (/Pattern verification failed|error|failed/i.test(stdout)) throw new Error(`qemu-io ${command}: ${stdout}`);
  return stdout;
}

export function makeTempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

/**
 * An xfs filesystem (reflink-capable) on a loop device backed by a sparse file in a temp dir. `release()` unmounts,
 * detaches and deletes whatever of it exists, so it is safe to call after a partial `create()`.
 */
export class LoopXfs {
  private loopDevice: string | undefined;
  private mounted = false;

  private constructor(
    readonly root: string,
    readonly mountPoint: string,
  ) {}

  static async create(sizeMiB = 512): Promise<LoopXfs> {
    const root = await makeTempDir('kiln-xfs-');
    const fs = new LoopXfs(root, join(root, 'mnt'));
    try {
      const backing = join(root, 'xfs.img');
      const file = await open(backing, 'w');
      await file.truncate(sizeMiB * MiB);
      await file.close();
      await runHostCommand('mkfs.xfs', ['-q', '-m', 'reflink=1', backing]);
      fs.loopDevice = (await runHostCommand('losetup', ['--find', '--show', backing])).stdout.trim();
      await mkdir(fs.mountPoint);
      await runHostCommand('mount', ['-t', 'xfs', fs.loopDevice, fs.mountPoint]);
      fs.mounted = true;
      return fs;
    } catch (err) {
      await fs.release();
      throw err;
    }
  }

  async release(): Promise<void> {
    if (this.mounted) {
      await runHostCommand('umount', [this.mountPoint]);
      this.mounted = false;
    }
    if (this.loopDevice) {
      await runHostCommand('losetup', ['-d', this.loopDevice]);
      this.loopDevice = undefined;
    }
    await rmdir(this.mountPoint).catch(() => undefined);
    await rm(this.root, { recursive: true, force: true });
  }
}
