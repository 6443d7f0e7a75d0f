import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import { VmSnapshotError } from './vmm.errors';

/**
 * The guest pages a VM changed since its restore point, read out of and written back into the VMM's address space.
 *
 * A clone maps its template's memory file private: a page the guest never wrote is still the file's page (shared by
 * every clone), a page it wrote is the VMM's own anonymous copy. /proc/<pid>/pagemap tells the two apart, so the
 * pages a checkpoint must keep are exactly the anonymous ones, whatever the VM's RAM size. A restore maps the same
 * template file private and writes those pages back through /proc/<pid>/mem before the device state is loaded.
 *
 * Files: `pages` holds the changed pages back to back; the index lists them as runs of (first page, page count),
 * little-endian u32 pairs, in ascending order. Both are hashed while they are written.
 */

export const PAGE_SIZE = 4096;
/** pagemap entry flags, in the entry's high 32-bit word (bits 63, 62, 61 of the entry). */
const PAGEMAP_PRESENT = 0x8000_0000;
const PAGEMAP_SWAPPED = 0x4000_0000;
const PAGEMAP_FILE_OR_SHARED = 0x2000_0000;
/** Pages copied per read or write of /proc/<pid>/mem when restoring: bounds the buffer, keeps syscalls few. */
const COPY_CHUNK_PAGES = 1024;
/** Pages gathered before one write to the pages file (and one hand-over to the hashing thread): 2 MiB. */
const STAGING_PAGES = 512;
/**
 * Staging buffers, reused: one filling while others are hashed. Fresh memory is dear where the host itself is a VM
 * (every first touch of a page may trap to the outer hypervisor), so the buffers travel between threads, not anew.
 */
const STAGING_BUFFERS = 3;

/** One VMA of the guest-RAM mapping: its address range and where in the memory file it starts. */
export interface GuestRamArea {
  start: number;
  end: number;
  /** Offset into the memory file, i.e. into guest RAM. */
  fileOffset: number;
}

export interface MemoryPagesFiles {
  pagesPath: string;
  indexPath: string;
}

export interface CapturedMemoryPages {
  pages: number;
  bytes: number;
  runs: number;
  pagesSha256: string;
  indexSha256: string;
  indexBytes: number;
}

/**
 * The VMAs of `pid` that map `memoryFilePath` (matched by device and inode, not by name: a chrooted VMM's mapping
 * names are not ours to trust), ordered by file offset.
 */
export async function findGuestRamAreas(pid: number, memoryFilePath: string): Promise<GuestRamArea[]> {
  const file = await stat(memoryFilePath);
  const maps = await readFile(`/proc/${pid}/maps`, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new VmSnapshotError(`cannot read the memory map of VMM ${pid}: ${error.code ?? error.message}`);
  });
  const areas: GuestRamArea[] = [];
  for (const line of maps.split('\n')) {
    // 7f12a0000000-7f12c0000000 rw-p 00000000 fe:01 1234567   /path
    const fields = line.split(/\s+/, 6);
    if (fields.length < 5) continue;
    const inode = Number(fields[4]);
    if (inode !== file.ino) continue;
    const [major, minor] = fields[3].split(':').map((part) => parseInt(part, 16));
    if (makedev(major, minor) !== file.dev) continue;
    const [start, end] = fields[0].split('-').map((part) => parseInt(part, 16));
    areas.push({ start, end, fileOffset: parseInt(fields[2], 16) });
  }
  if (areas.length === 0) throw new VmSnapshotError(`VMM ${pid} does not map ${memoryFilePath}`);
  return areas.sort((a, b) => a.fileOffset - b.fileOffset);
}

/** Linux's new_encode_dev, which is how stat() reports st_dev. */
function makedev(major: number, minor: number): number {
  return (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12);
}

/**
 * Writes every page of the guest-RAM areas that the VMM holds privately (written since the restore, in RAM or in
 * swap) to `files`. The VM must be stopped: pages read while vCPUs run would not match the saved device state.
 * Pages are staged in large buffers (few syscalls for scattered pages) and hashed on another thread while the next
 * buffer fills.
 */
export async function captureChangedPages(pid: number, areas: GuestRamArea[], files: MemoryPagesFiles): Promise<CapturedMemoryPages> {
  const runs = changedPageRuns(pid, areas);
  const hasher = new Sha256OffThread(STAGING_BUFFERS, STAGING_PAGES * PAGE_SIZE);
  const mem = openSync(`/proc/${pid}/mem`, 'r');
  const out = openSync(files.pagesPath, 'wx', 0o600);
  let pages = 0;
  try {
    let staging = await hasher.buffer();
    let staged = 0;
    const flush = async () => {
      if (staged === 0) return;
      writeFully(out, staging.subarray(0, staged));
      hasher.update(staging, staged);
      staging = await hasher.buffer();
      staged = 0;
    };
    for (const run of runs) {
      const area = areaOf(areas, run.firstPage, run.count);
      for (let done = 0; done < run.count; ) {
        const count = Math.min(STAGING_PAGES - staged / PAGE_SIZE, run.count - done);
        const address = area.start + (run.firstPage + done) * PAGE_SIZE - area.fileOffset;
        readFully(mem, staging, count * PAGE_SIZE, address, pid, staged);
        staged += count * PAGE_SIZE;
        done += count;
        pages += count;
        if (staged === staging.length) await flush();
      }
    }
    await flush();
  } catch (error) {
    hasher.abandon();
    throw error;
  } finally {
    closeSync(mem);
    closeSync(out);
  }
  const index = encodeIndex(runs);
  const indexFd = openSync(files.indexPath, 'wx', 0o600);
  try {
    writeFully(indexFd, index);
  } finally {
    closeSync(indexFd);
  }
  return {
    pages,
    bytes: pages * PAGE_SIZE,
    runs: runs.length,
    pagesSha256: await hasher.digest(),
    indexSha256: createHash('sha256').update(index).digest('hex'),
    indexBytes: index.length,
  };
}

/**
 * Writes captured pages back into a VMM that maps the same memory file private (its guest not yet running): each
 * write makes the VMM's own copy of the page, as the guest's write did in the VM they were captured from.
 */
export async function applyChangedPages(pid: number, areas: GuestRamArea[], files: MemoryPagesFiles): Promise<{ pages: number }> {
  const runs = decodeIndex(await readFile(files.indexPath), files.indexPath);
  const mem = openSync(`/proc/${pid}/mem`, 'r+');
  const source = openSync(files.pagesPath, 'r');
  let pages = 0;
  try {
    const expectedBytes = runs.reduce((sum, run) => sum + run.count, 0) * PAGE_SIZE;
    const { size } = fstatSync(source);
    if (size !== expectedBytes) throw new VmSnapshotError(`${files.pagesPath}: ${size} bytes, its index lists ${expectedBytes}`);
    const buffer = Buffer.allocUnsafe(COPY_CHUNK_PAGES * PAGE_SIZE);
    let position = 0;
    for (const run of runs) {
      const area = areaOf(areas, run.firstPage, run.count);
      for (let done = 0; done < run.count; ) {
        const count = Math.min(COPY_CHUNK_PAGES, run.count - done);
        const length = count * PAGE_SIZE;
        readFully(source, buffer, length, position, pid);
        const address = area.start + (run.firstPage + done) * PAGE_SIZE - area.fileOffset;
        let written = 0;
        while (written < length) written += writeSync(mem, buffer, written, length - written, address + written);
        position += length;
        done += count;
        pages += count;
      }
    }
  } finally {
    closeSync(mem);
    closeSync(source);
  }
  return { pages };
}

interface PageRun {
  /** Page number within guest RAM (the memory file). */
  firstPage: number;
  count: number;
}

/** Runs of pages the VMM holds privately, from one pagemap read per area. */
function changedPageRuns(pid: number, areas: GuestRamArea[]): PageRun[] {
  const pagemap = openSync(`/proc/${pid}/pagemap`, 'r');
  const runs: PageRun[] = [];
  try {
    for (const area of areas) {
      const pageCount = (area.end - area.start) / PAGE_SIZE;
      const entries = Buffer.allocUnsafe(pageCount * 8);
      readFully(pagemap, entries, entries.length, (area.start / PAGE_SIZE) * 8, pid);
      const firstPageOfArea = area.fileOffset / PAGE_SIZE;
      let runStart = -1;
      for (let i = 0; i <= pageCount; i++) {
        let changed = false;
        if (i < pageCount) {
          // The flags are bits 61-63: the high word is enough (and reading it is far cheaper than a BigInt).
          const flags = entries.readUInt32LE(i * 8 + 4);
          changed = (flags & PAGEMAP_SWAPPED) !== 0 || ((flags & PAGEMAP_PRESENT) !== 0 && (flags & PAGEMAP_FILE_OR_SHARED) === 0);
        }
        if (changed && runStart < 0) runStart = i;
        if (!changed && runStart >= 0) {
          runs.push({ firstPage: firstPageOfArea + runStart, count: i - runStart });
          runStart = -1;
        }
      }
    }
  } finally {
    closeSync(pagemap);
  }
  return runs;
}

function areaOf(areas: GuestRamArea[], firstPage: number, count = 1): GuestRamArea {
  const from = firstPage * PAGE_SIZE;
  const to = from + count * PAGE_SIZE;
  const area = areas.find((a) => from >= a.fileOffset && to <= a.fileOffset + (a.end - a.start));
  if (!area) throw new VmSnapshotError(`guest pages ${firstPage}..${firstPage + count - 1} are outside the VMM's guest RAM`);
  return area;
}

function encodeIndex(runs: PageRun[]): Buffer {
  const index = Buffer.alloc(runs.length * 8);
  runs.forEach((run, i) => {
    index.writeUInt32LE(run.firstPage, i * 8);
    index.writeUInt32LE(run.count, i * 8 + 4);
  });
  return index;
}

function decodeIndex(index: Buffer, path: string): PageRun[] {
  if (index.length % 8 !== 0) throw new VmSnapshotError(`${path}: ${index.length} bytes is not a list of page runs`);
  const runs: PageRun[] = [];
  let next = 0;
  for (let offset = 0; offset < index.length; offset += 8) {
    const run = { firstPage: index.readUInt32LE(offset), count: index.readUInt32LE(offset + 4) };
    if (run.count === 0 || run.firstPage < next) throw new VmSnapshotError(`${path}: page runs out of order at entry ${offset / 8}`);
    next = run.firstPage + run.count;
    runs.push(run);
  }
  return runs;
}

function readFully(fd: number, buffer: Buffer, length: number, position: number, pid: number, at = 0): void {
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buffer, at + done, length - done, position + done);
    if (n === 0) throw new VmSnapshotError(`short read at ${position + done} (VMM ${pid})`);
    done += n;
  }
}

function writeFully(fd: number, data: Buffer): void {
  let done = 0;
  while (done < data.length) done += writeSync(fd, data, done, data.length - done);
}

/**
 * A sha256 computed on a worker thread from buffers handed over (transferred, not copied) as they are written, and
 * handed back once hashed: hashing the pages costs the checkpoint nothing on a host with a core to spare. Inline
 * source, so bundled tools need no extra file.
 */
class Sha256OffThread {
  private static readonly source = `
    const { parentPort } = require('node:worker_threads');
    const hash = require('node:crypto').createHash('sha256');
    parentPort.on('message', (m) => {
      if (m.buffer) {
        hash.update(new Uint8Array(m.buffer, 0, m.length));
        parentPort.postMessage({ buffer: m.buffer }, [m.buffer]);
      } else {
        parentPort.postMessage({ digest: hash.digest('hex') });
      }
    });`;
  private readonly worker = new Worker(Sha256OffThread.source, { eval: true });
  private readonly free: ArrayBuffer[] = [];
  private readonly waiting: Array<(buffer: ArrayBuffer) => void> = [];
  private readonly failed: Promise<never>;
  private digestOf: ((digest: string) => void) | undefined;

  constructor(count: number, private readonly size: number) {
    for (let i = 0; i < count; i++) this.free.push(new ArrayBuffer(size));
    this.failed = new Promise((_, reject) => this.worker.once('error', reject));
    this.failed.catch(() => undefined);
    this.worker.on('message', (m: { buffer?: ArrayBuffer; digest?: string }) => {
      if (m.buffer) {
        const next = this.waiting.shift();
        if (next) next(m.buffer);
        else this.free.push(m.buffer);
      } else if (m.digest) {
        this.digestOf?.(m.digest);
      }
    });
  }

  /** A buffer to fill, once the worker has one back. */
  async buffer(): Promise<Buffer> {
    const ready = this.free.pop();
    const buffer = ready ?? (await Promise.race([new Promise<ArrayBuffer>((resolve) => this.waiting.push(resolve)), this.failed]));
    return Buffer.from(buffer, 0, this.size);
  }

  /** Hands the first `length` bytes of `buffer` (one from buffer()) over: the caller must not touch it again. */
  update(buffer: Buffer, length: number): void {
    this.worker.postMessage({ buffer: buffer.buffer, length }, [buffer.buffer as ArrayBuffer]);
  }

  async digest(): Promise<string> {
    try {
      const digest = new Promise<string>((resolve) => (this.digestOf = resolve));
      this.worker.postMessage({});
      return await Promise.race([digest, this.failed]);
    } finally {
      await this.worker.terminate();
    }
  }

  abandon(): void {
    void this.worker.terminate();
  }
}
