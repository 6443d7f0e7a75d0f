import { createHash, type Hash } from 'node:crypto';
import { open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { PAGE_SIZE } from '../guest-memory-pages';
import type { ChangedMemoryFiles } from '../vmm-driver';
import { loadDataExtentsReader, type DataExtent, type DataExtentsReader } from './data-extents';
import { DiffMemoryConversionError } from './firecracker.errors';

/**
 * Turns Firecracker's Diff snapshot memory into Kiln's checkpoint layout (guest-memory-pages.ts): memory.pages = the
 * changed guest pages back to back, memory.index = runs of (u32 LE first page, u32 LE page count), ascending,
 * non-overlapping, count > 0.
 *
 * What a Diff holds: a sparse file of the guest's RAM size in which Firecracker wrote, at their own offsets, the pages
 * dirtied since the VM was loaded or since its previous snapshot (Full or Diff: taking one clears the dirty log);
 * everything else is a hole. The written pages are the file's data extents (lseek SEEK_DATA/SEEK_HOLE, native addon
 * data_extents.node). Content cannot tell them apart: a page the guest zeroed is written zeros, not a hole.
 *
 * What a checkpoint must hold: every page that differs from the VM's memory file (the template's RAM, or the all-zero
 * file). A clone restored from a template changed exactly the pages it dirtied, so the first Diff is the answer. A
 * clone restored from a checkpoint already differed in that checkpoint's pages, and a clone checkpointed before (then
 * resumed) already differed in the pages of its previous checkpoint, which its next Diff no longer lists. So:
 *
 *   changed pages = base pages (the restore's or previous checkpoint's memory.pages/index, if any)
 *                   merged with the Diff's pages, the Diff's content winning where both have a page.
 *
 * Extents are widened to whole pages (an extent edge inside a page keeps that page; the hole part of it reads as
 * zeros, which is what the Diff file says the page holds). This relies on the file system reporting data extents no
 * coarser than the pages Firecracker wrote: one that allocates in larger units (tmpfs with huge pages, big
 * allocation clusters) would report neighbouring clean pages as data, and they would be kept as zero pages.
 */

/** A run of guest pages: `count` pages from page `firstPage`. */
export interface PageRun {
  firstPage: number;
  count: number;
}

export interface DiffMemoryInput {
  /** Firecracker's Diff memory file (mem_file_path of PUT /snapshot/create with snapshot_type Diff). */
  diffPath: string;
  /** Pages the guest already differed in before the Diff's dirty log began; absent: none. */
  base?: ChangedMemoryFiles;
  /** Where to write memory.pages and memory.index; neither may exist yet. */
  out: ChangedMemoryFiles;
  /** The extents reader; defaults to the native addon. */
  readExtents?: DataExtentsReader;
}

/** The VmCheckpoint.changedMemory shape plus the sha256s and where the pages came from. */
export interface ConvertedChangedMemory extends ChangedMemoryFiles {
  pages: number;
  bytes: number;
  runs: number;
  indexBytes: number;
  pagesSha256: string;
  indexSha256: string;
  /** Pages taken from the Diff, and from the base (those the Diff did not have). */
  diffPages: number;
  basePages: number;
}

/** u32 page numbers: runs must end at or before this page. */
const MAX_PAGES = 2 ** 32;
/** Pages copied per read/write. */
const CHUNK_PAGES = 256;

/**
 * The whole pages covered by a file's data extents, as ascending runs (extents that share or touch a page merge).
 * Extents are clipped to `fileBytes`.
 */
export function pageRunsOfExtents(extents: DataExtent[], fileBytes: number): PageRun[] {
  const runs: PageRun[] = [];
  let previousEnd = 0;
  for (const [offset, length] of extents) {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset < previousEnd) {
      throw new DiffMemoryConversionError(`data extent [${offset}, ${length}] is not ascending, positive and non-overlapping`);
    }
    previousEnd = offset + length;
    const end = Math.min(offset + length, fileBytes);
    if (end <= offset) continue;
    const firstPage = Math.floor(offset / PAGE_SIZE);
    const endPage = Math.ceil(end / PAGE_SIZE);
    if (endPage > MAX_PAGES) throw new DiffMemoryConversionError(`data at byte ${offset} is past the ${MAX_PAGES} pages a memory.index can name`);
    const last = runs[runs.length - 1];
    if (last && firstPage <= last.firstPage + last.count) last.count = Math.max(last.count, endPage - last.firstPage);
    else runs.push({ firstPage, count: endPage - firstPage });
  }
  return runs;
}

/** Parses a memory.index (checks: whole entries, count > 0, ascending, non-overlapping, within u32 pages). */
export function parsePageIndex(index: Buffer, source: string): PageRun[] {
  if (index.length % 8 !== 0) throw new DiffMemoryConversionError(`${source}: ${index.length} bytes is not a list of page runs`);
  const runs: PageRun[] = [];
  let next = 0;
  for (let at = 0; at < index.length; at += 8) {
    const firstPage = index.readUInt32LE(at);
    const count = index.readUInt32LE(at + 4);
    if (count === 0 || firstPage < next || firstPage + count > MAX_PAGES) {
      throw new DiffMemoryConversionError(`${source}: run ${at / 8} (page ${firstPage}, ${count} pages) is empty, out of order or overlapping`);
    }
    next = firstPage + count;
    runs.push({ firstPage, count });
  }
  return runs;
}

/** The index bytes of `runs` (u32 LE first page, u32 LE count each). */
export function encodePageIndex(runs: PageRun[]): Buffer {
  const index = Buffer.alloc(runs.length * 8);
  runs.forEach(({ firstPage, count }, i) => {
    index.writeUInt32LE(firstPage, i * 8);
    index.writeUInt32LE(count, i * 8 + 4);
  });
  return index;
}

/** Where the bytes of a run of output pages come from: the Diff file (at the pages' own offsets) or the base pages file. */
export interface PageSegment extends PageRun {
  from: 'diff' | 'base';
  /** Byte offset of the segment's first page in its source file. */
  sourceOffset: number;
}

/**
 * The output pages in order: every Diff run, and the parts of base runs no Diff run covers (Diff wins), each with
 * where its bytes are. `base` runs index the base pages file back to back.
 */
export function mergePageSegments(base: PageRun[], diff: PageRun[]): PageSegment[] {
  const kept: PageSegment[] = [];
  let basePagesBefore = 0;
  let d = 0;
  for (const run of base) {
    const runEnd = run.firstPage + run.count;
    const keep = (from: number, to: number) =>
      kept.push({ firstPage: from, count: to - from, from: 'base', sourceOffset: (basePagesBefore + from - run.firstPage) * PAGE_SIZE });
    while (d < diff.length && diff[d].firstPage + diff[d].count <= run.firstPage) d++;
    let at = run.firstPage;
    for (let k = d; at < runEnd; k++) {
      if (k >= diff.length || diff[k].firstPage >= runEnd) {
        keep(at, runEnd);
        break;
      }
      if (diff[k].firstPage > at) keep(at, diff[k].firstPage);
      at = Math.max(at, diff[k].firstPage + diff[k].count);
    }
    basePagesBefore += run.count;
  }
  const fromDiff: PageSegment[] = diff.map((run) => ({ ...run, from: 'diff', sourceOffset: run.firstPage * PAGE_SIZE }));
  const segments: PageSegment[] = [];
  for (let b = 0, k = 0; b < kept.length || k < fromDiff.length; ) {
    segments.push(k >= fromDiff.length || (b < kept.length && kept[b].firstPage < fromDiff[k].firstPage) ? kept[b++] : fromDiff[k++]);
  }
  return segments;
}

/** Runs of the segments with adjacent ones joined (the index names pages, not where they came from). */
export function runsOfSegments(segments: PageRun[]): PageRun[] {
  const runs: PageRun[] = [];
  for (const { firstPage, count } of segments) {
    const last = runs[runs.length - 1];
    if (last && last.firstPage + last.count === firstPage) last.count += count;
    else runs.push({ firstPage, count });
  }
  return runs;
}

/**
 * Writes `out` (memory.pages + memory.index) from a Diff memory file and the optional base pages. Removes what it
 * wrote when it fails. Throws DiffMemoryConversionError (or DataExtentsUnavailableError without the addon).
 */
export async function changedPagesFromDiff(input: DiffMemoryInput): Promise<ConvertedChangedMemory> {
  const readExtents = input.readExtents ?? loadDataExtentsReader();
  let diff: FileHandle | undefined;
  let base: FileHandle | undefined;
  let pagesOut: FileHandle | undefined;
  // Only files this call created are removed on failure ('wx': an existing one is someone else's).
  const created: string[] = [];
  try {
    diff = await open(input.diffPath, 'r').catch((error: NodeJS.ErrnoException) => {
      throw new DiffMemoryConversionError(`cannot open the Diff memory file ${input.diffPath}: ${error.code ?? error.message}`);
    });
    const diffBytes = (await diff.stat()).size;
    let extents: DataExtent[];
    try {
      extents = readExtents(diff.fd);
    } catch (error) {
      throw new DiffMemoryConversionError(`cannot list the data extents of ${input.diffPath}: ${(error as Error).message}`);
    }
    const diffRuns = pageRunsOfExtents(extents, diffBytes);

    let baseRuns: PageRun[] = [];
    if (input.base) {
      const index = await readFile(input.base.indexPath).catch((error: NodeJS.ErrnoException) => {
        throw new DiffMemoryConversionError(`cannot read the base index ${input.base!.indexPath}: ${error.code ?? error.message}`);
      });
      baseRuns = parsePageIndex(index, input.base.indexPath);
      base = await open(input.base.pagesPath, 'r').catch((error: NodeJS.ErrnoException) => {
        throw new DiffMemoryConversionError(`cannot open the base pages ${input.base!.pagesPath}: ${error.code ?? error.message}`);
      });
      const listed = baseRuns.reduce((sum, run) => sum + run.count, 0) * PAGE_SIZE;
      const { size } = await base.stat();
      if (size !== listed) throw new DiffMemoryConversionError(`${input.base.pagesPath}: ${size} bytes, its index lists ${listed}`);
    }

    const segments = mergePageSegments(baseRuns, diffRuns);
    const runs = runsOfSegments(segments);
    pagesOut = await open(input.out.pagesPath, 'wx', 0o600);
    created.push(input.out.pagesPath);
    const pagesHash = createHash('sha256');
    const buffer = Buffer.allocUnsafe(CHUNK_PAGES * PAGE_SIZE);
    let diffPages = 0;
    let basePages = 0;
    let written = 0;
    for (const segment of segments) {
      const source = segment.from === 'diff' ? diff : base!;
      const sourcePath = segment.from === 'diff' ? input.diffPath : input.base!.pagesPath;
      for (let done = 0; done < segment.count; ) {
        const n = Math.min(CHUNK_PAGES, segment.count - done);
        const chunk = buffer.subarray(0, n * PAGE_SIZE);
        await readFully(source, chunk, segment.sourceOffset + done * PAGE_SIZE, sourcePath);
        await writeFully(pagesOut, chunk, written, pagesHash);
        written += chunk.length;
        done += n;
      }
      if (segment.from === 'diff') diffPages += segment.count;
      else basePages += segment.count;
    }
    await pagesOut.close();
    pagesOut = undefined;

    const index = encodePageIndex(runs);
    await writeNewFile(input.out.indexPath, index, () => created.push(input.out.indexPath));
    return {
      ...input.out,
      pages: diffPages + basePages,
      bytes: written,
      runs: runs.length,
      indexBytes: index.length,
      pagesSha256: pagesHash.digest('hex'),
      indexSha256: createHash('sha256').update(index).digest('hex'),
      diffPages,
      basePages,
    };
  } catch (error) {
    await pagesOut?.close().catch(() => undefined);
    await Promise.all(created.map((path) => rm(path, { force: true }))).catch(() => undefined);
    if (error instanceof DiffMemoryConversionError) throw error;
    throw new DiffMemoryConversionError(`converting the Diff memory ${input.diffPath}: ${(error as Error).message}`);
  } finally {
    await diff?.close().catch(() => undefined);
    await base?.close().catch(() => undefined);
  }
}

async function readFully(file: FileHandle, target: Buffer, position: number, path: string): Promise<void> {
  for (let done = 0; done < target.length; ) {
    const { bytesRead } = await file.read(target, done, target.length - done, position + done);
    if (bytesRead === 0) throw new DiffMemoryConversionError(`${path}: ends at byte ${position + done}, a page was expected there`);
    done += bytesRead;
  }
}

async function writeFully(file: FileHandle, data: Buffer, position: number, hash: Hash): Promise<void> {
  for (let done = 0; done < data.length; ) {
    const { bytesWritten } = await file.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
  hash.update(data);
}

async function writeNewFile(path: string, data: Buffer, onCreated: () => void): Promise<void> {
  const file = await open(path, 'wx', 0o600);
  onCreated();
  try {
    for (let done = 0; done < data.length; ) done += (await file.write(data, done, data.length - done, done)).bytesWritten;
  } finally {
    await file.close();
  }
}
