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
 * The copies themselves run on a worker thread (PAGE_COPY_WORKER_SOURCE below).
 */

export const PAGE_SIZE = 4096;

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
 * swap) to `files`, hashing them as they go. The VM must be stopped: pages read while vCPUs run would not match the
 * saved device state. The copy runs on the page-copy worker (see PAGE_COPY_WORKER_SOURCE).
 */
export async function captureChangedPages(pid: number, areas: GuestRamArea[], files: MemoryPagesFiles): Promise<CapturedMemoryPages> {
  return (await pageCopier.run({ kind: 'capture', pid, areas, files })) as CapturedMemoryPages;
}

/**
 * Writes captured pages back into a VMM that maps the same memory file private (its guest not yet running): each
 * write makes the VMM's own copy of the page, as the guest's write did in the VM they were captured from.
 */
export async function applyChangedPages(pid: number, areas: GuestRamArea[], files: MemoryPagesFiles): Promise<{ pages: number }> {
  return (await pageCopier.run({ kind: 'apply', pid, areas, files })) as { pages: number };
}

/**
 * The page copies, on one long-lived worker thread: tens of MiB go through /proc/<pid>/mem per checkpoint or
 * restore, and on the agent's event loop that would stall its proxy, gRPC and every other sandbox's requests for as
 * long. Plain JavaScript, inline, so bundled tools need no extra file.
 *
 * Files: `pages` holds the changed pages back to back; the index lists them as runs of (first page, page count),
 * little-endian u32 pairs, ascending. pagemap entry flags are in each entry's high 32-bit word: present (bit 63),
 * swapped (62), file-page or shared-anon (61); a page the VMM holds privately is swapped, or present and not file.
 */
const PAGE_COPY_WORKER_SOURCE = `
  const { parentPort } = require('node:worker_threads');
  const { createHash } = require('node:crypto');
  const { openSync, readSync, writeSync, closeSync, fstatSync, readFileSync } = require('node:fs');
  const PAGE = ${PAGE_SIZE};
  const CHUNK_PAGES = 512;
  const buffer = Buffer.allocUnsafe(CHUNK_PAGES * PAGE);
  const PRESENT = 0x80000000, SWAPPED = 0x40000000, FILE = 0x20000000;

  function readFully(fd, target, length, position, at) {
    for (let done = 0; done < length; ) {
      const n = readSync(fd, target, (at || 0) + done, length - done, position + done);
      if (n === 0) throw new Error('short read at ' + (position + done));
      done += n;
    }
  }
  function writeFully(fd, data, position) {
    for (let done = 0; done < data.length; ) {
      done += writeSync(fd, data, done, data.length - done, position === undefined ? null : position + done);
    }
  }
  function areaOf(areas, firstPage, count) {
    const from = firstPage * PAGE, to = from + count * PAGE;
    const area = areas.find((a) => from >= a.fileOffset && to <= a.fileOffset + (a.end - a.start));
    if (!area) throw new Error('guest pages ' + firstPage + '..' + (firstPage + count - 1) + " are outside the VMM's guest RAM");
    return area;
  }
  function changedRuns(pid, areas) {
    const pagemap = openSync('/proc/' + pid + '/pagemap', 'r');
    const runs = [];
    try {
      for (const area of areas) {
        const pageCount = (area.end - area.start) / PAGE;
        const entries = Buffer.allocUnsafe(pageCount * 8);
        readFully(pagemap, entries, entries.length, (area.start / PAGE) * 8);
        const first = area.fileOffset / PAGE;
        let runStart = -1;
        for (let i = 0; i <= pageCount; i++) {
          let changed = false;
          if (i < pageCount) {
            const flags = entries.readUInt32LE(i * 8 + 4);
            changed = (flags & SWAPPED) !== 0 || ((flags & PRESENT) !== 0 && (flags & FILE) === 0);
          }
          if (changed && runStart < 0) runStart = i;
          if (!changed && runStart >= 0) { runs.push([first + runStart, i - runStart]); runStart = -1; }
        }
      }
    } finally { closeSync(pagemap); }
    return runs;
  }
  function capture({ pid, areas, files }) {
    const runs = changedRuns(pid, areas);
    const mem = openSync('/proc/' + pid + '/mem', 'r');
    const out = openSync(files.pagesPath, 'wx', 0o600);
    const hash = createHash('sha256');
    let pages = 0, staged = 0;
    const flush = () => {
      if (staged === 0) return;
      const chunk = buffer.subarray(0, staged);
      writeFully(out, chunk);
      hash.update(chunk);
      staged = 0;
    };
    try {
      for (const [firstPage, count] of runs) {
        const area = areaOf(areas, firstPage, count);
        for (let done = 0; done < count; ) {
          const n = Math.min(CHUNK_PAGES - staged / PAGE, count - done);
          readFully(mem, buffer, n * PAGE, area.start + (firstPage + done) * PAGE - area.fileOffset, staged);
          staged += n * PAGE; done += n; pages += n;
          if (staged === buffer.length) flush();
        }
      }
      flush();
    } finally { closeSync(mem); closeSync(out); }
    const index = Buffer.alloc(runs.length * 8);
    runs.forEach(([firstPage, count], i) => { index.writeUInt32LE(firstPage, i * 8); index.writeUInt32LE(count, i * 8 + 4); });
    const indexFd = openSync(files.indexPath, 'wx', 0o600);
    try { writeFully(indexFd, index); } finally { closeSync(indexFd); }
    return { pages, bytes: pages * PAGE, runs: runs.length, pagesSha256: hash.digest('hex'),
      indexSha256: createHash('sha256').update(index).digest('hex'), indexBytes: index.length };
  }
  function apply({ pid, areas, files }) {
    const index = readFileSync(files.indexPath);
    if (index.length % 8 !== 0) throw new Error(files.indexPath + ': ' + index.length + ' bytes is not a list of page runs');
    const runs = [];
    let next = 0, total = 0;
    for (let at = 0; at < index.length; at += 8) {
      const firstPage = index.readUInt32LE(at), count = index.readUInt32LE(at + 4);
      if (count === 0 || firstPage < next) throw new Error(files.indexPath + ': page runs out of order at entry ' + at / 8);
      next = firstPage + count; total += count;
      runs.push([firstPage, count]);
    }
    const mem = openSync('/proc/' + pid + '/mem', 'r+');
    const source = openSync(files.pagesPath, 'r');
    let pages = 0, position = 0;
    try {
      const size = fstatSync(source).size;
      if (size !== total * PAGE) throw new Error(files.pagesPath + ': ' + size + ' bytes, its index lists ' + total * PAGE);
      for (const [firstPage, count] of runs) {
        const area = areaOf(areas, firstPage, count);
        for (let done = 0; done < count; ) {
          const n = Math.min(CHUNK_PAGES, count - done);
          readFully(source, buffer, n * PAGE, position);
          writeFully(mem, buffer.subarray(0, n * PAGE), area.start + (firstPage + done) * PAGE - area.fileOffset);
          position += n * PAGE; done += n; pages += n;
        }
      }
    } finally { closeSync(mem); closeSync(source); }
    return { pages };
  }
  parentPort.on('message', ({ id, job }) => {
    try {
      parentPort.postMessage({ id, result: job.kind === 'capture' ? capture(job) : apply(job) });
    } catch (error) {
      parentPort.postMessage({ id, error: error.message });
    }
  });`;

type PageCopyJob = { kind: 'capture' | 'apply'; pid: number; areas: GuestRamArea[]; files: MemoryPagesFiles };

/** Runs page copies on the worker, one after another; an idle worker never holds the process alive. */
class PageCopier {
  private worker: Worker | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (result: unknown) => void; reject: (error: Error) => void }>();

  run(job: PageCopyJob): Promise<unknown> {
    const worker = this.started();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) worker.ref();
      worker.postMessage({ id, job });
    });
  }

  private started(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(PAGE_COPY_WORKER_SOURCE, { eval: true });
    worker.unref();
    worker.on('message', (reply: { id: number; result?: unknown; error?: string }) => {
      const waiting = this.pending.get(reply.id);
      if (!waiting) return;
      this.pending.delete(reply.id);
      if (this.pending.size === 0) worker.unref();
      if (reply.error !== undefined) waiting.reject(new VmSnapshotError(reply.error));
      else waiting.resolve(reply.result);
    });
    const fail = (error: Error) => {
      if (this.worker === worker) this.worker = undefined;
      for (const [, waiting] of this.pending) waiting.reject(new VmSnapshotError(`page copy worker failed: ${error.message}`));
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`exited (${code})`)));
    this.worker = worker;
    return worker;
  }
}

const pageCopier = new PageCopier();
