import { copyFile, link, open } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';

/**
 * The two file operations every artifact the agent keeps goes through (template snapshots, checkpoints): its sha256,
 * and a flush of its data to the disk before a manifest names it.
 *
 * Hashing runs on one long-lived worker thread, reading each file through one reused buffer: verifying a checkpoint
 * before a restore then overlaps the VMM's start-up instead of holding the agent's event loop (its proxy, gRPC and
 * every other sandbox's requests) for as long as the hash takes. Inline source, so bundled tools need no extra file.
 */
const HASH_WORKER_SOURCE = `
  const { parentPort } = require('node:worker_threads');
  const { createHash } = require('node:crypto');
  const { openSync, readSync, closeSync } = require('node:fs');
  const buffer = Buffer.allocUnsafe(4 << 20);
  parentPort.on('message', ({ id, path }) => {
    let fd;
    try {
      fd = openSync(path, 'r');
      const hash = createHash('sha256');
      for (let n; (n = readSync(fd, buffer, 0, buffer.length, null)) > 0; ) hash.update(buffer.subarray(0, n));
      parentPort.postMessage({ id, sha256: hash.digest('hex') });
    } catch (error) {
      parentPort.postMessage({ id, error: { message: error.message, code: error.code } });
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  });`;

interface HashReply {
  id: number;
  sha256?: string;
  error?: { message: string; code?: string };
}

class FileHasher {
  private worker: Worker | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (sha256: string) => void; reject: (error: Error) => void }>();

  hash(path: string): Promise<string> {
    const worker = this.started();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // Only waiting hashes keep the process alive: an idle worker never holds up its exit.
      if (this.pending.size === 1) worker.ref();
      worker.postMessage({ id, path });
    });
  }

  private started(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(HASH_WORKER_SOURCE, { eval: true });
    worker.unref();
    worker.on('message', (reply: HashReply) => {
      const waiting = this.pending.get(reply.id);
      if (!waiting) return;
      this.pending.delete(reply.id);
      if (this.pending.size === 0) worker.unref();
      if (reply.sha256) waiting.resolve(reply.sha256);
      else waiting.reject(Object.assign(new Error(reply.error?.message ?? 'hashing failed'), { code: reply.error?.code }));
    });
    // A worker that died fails what it was doing; the next hash starts a new one.
    const fail = (error: Error) => {
      if (this.worker === worker) this.worker = undefined;
      for (const [, waiting] of this.pending) waiting.reject(error);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`file hashing worker exited (${code})`)));
    this.worker = worker;
    return worker;
  }
}

const hasher = new FileHasher();

export function sha256File(path: string): Promise<string> {
  return hasher.hash(path);
}

export async function syncFileData(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.datasync();
  } finally {
    await handle.close();
  }
}

/**
 * Hard-links `source` at `target` (content that never changes: no second copy on disk); a copy when they are on
 * different filesystems, or an error when `acrossFilesystems` is 'refuse' (a link is required, e.g. a disk layer).
 */
export async function linkOrCopy(source: string, target: string, acrossFilesystems: 'copy' | 'refuse' = 'copy'): Promise<void> {
  try {
    await link(source, target);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EXDEV' || acrossFilesystems === 'refuse') throw error;
    await copyFile(source, target);
  }
}
