import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PAGE_SIZE } from '../guest-memory-pages';
import { loadDataExtentsReader } from './data-extents';
import { changedPagesFromDiff, encodePageIndex, mergePageSegments, pageRunsOfExtents, type PageRun } from './diff-memory';
import { DiffMemoryConversionError } from './firecracker.errors';

/** A page whose bytes say which page it is and which writer wrote it (no two pages of a test are alike). */
function pageOf(page: number, writer: number): Buffer {
  const bytes = Buffer.alloc(PAGE_SIZE, (page * 7 + writer * 31) & 0xff);
  bytes.writeUInt32LE(page, 0);
  bytes.writeUInt32LE(writer, 4);
  return bytes;
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describe('Diff memory (sparse file) → memory.pages + memory.index', () => {
  let dir: string;
  let counter = 0;
  const dataExtents = loadDataExtentsReader();

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'diff-memory-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A sparse file of `pages` pages (truncate) with `written` pages pwritten at their offsets, as Firecracker writes a Diff. */
  async function sparseFile(pages: number, written: Map<number, Buffer>): Promise<string> {
    const path = join(dir, `diff-${++counter}`);
    await writeFile(path, '');
    await truncate(path, pages * PAGE_SIZE);
    const fd = openSync(path, 'r+');
    try {
      for (const [page, bytes] of written) writeSync(fd, bytes, 0, bytes.length, page * PAGE_SIZE);
    } finally {
      closeSync(fd);
    }
    return path;
  }

  /** A checkpoint's changed pages: memory.pages + memory.index of `pages` (ascending). */
  async function changedFiles(pages: Map<number, Buffer>): Promise<{ pagesPath: string; indexPath: string }> {
    const numbers = [...pages.keys()].sort((a, b) => a - b);
    const runs: PageRun[] = [];
    for (const page of numbers) {
      const last = runs[runs.length - 1];
      if (last && last.firstPage + last.count === page) last.count++;
      else runs.push({ firstPage: page, count: 1 });
    }
    const pagesPath = join(dir, `base-${++counter}.pages`);
    const indexPath = join(dir, `base-${counter}.index`);
    await writeFile(pagesPath, Buffer.concat(numbers.map((page) => pages.get(page)!)));
    await writeFile(indexPath, encodePageIndex(runs));
    return { pagesPath, indexPath };
  }

  function out() {
    const n = ++counter;
    return { pagesPath: join(dir, `out-${n}.pages`), indexPath: join(dir, `out-${n}.index`) };
  }

  async function extentsOf(path: string) {
    const file = await open(path, 'r');
    try {
      return dataExtents(file.fd);
    } finally {
      await file.close();
    }
  }

  describe('dataExtents (native addon, lseek SEEK_DATA/SEEK_HOLE) on real files', () => {
    it('lists exactly the pages written into a truncated file, a written all-zero page included', async () => {
      const zeroPage = Buffer.alloc(PAGE_SIZE);
      const path = await sparseFile(64, new Map([[3, pageOf(3, 1)], [4, pageOf(4, 1)], [10, zeroPage], [63, pageOf(63, 1)]]));
      expect(await extentsOf(path)).toEqual([
        [3 * PAGE_SIZE, 2 * PAGE_SIZE],
        [10 * PAGE_SIZE, PAGE_SIZE],
        [63 * PAGE_SIZE, PAGE_SIZE],
      ]);
    });

    it('control: a fully written (dense) file is one extent of its whole size; an all-hole file has none', async () => {
      const dense = join(dir, 'dense');
      await writeFile(dense, Buffer.concat(Array.from({ length: 16 }, (_, page) => pageOf(page, 2))));
      expect(await extentsOf(dense)).toEqual([[0, 16 * PAGE_SIZE]]);
      expect(await extentsOf(await sparseFile(16, new Map()))).toEqual([]);
    });

    it("leaves the fd's file offset where it was", async () => {
      const path = await sparseFile(8, new Map([[2, pageOf(2, 1)]]));
      const fd = openSync(path, 'r');
      try {
        const before = Buffer.alloc(4);
        readSync(fd, before, 0, 4, null);
        dataExtents(fd);
        const next = Buffer.alloc(4);
        readSync(fd, next, 0, 4, null);
        // Reads at offset 4 of page 0 (a hole: zeros), not at the end of the last extent (EOF).
        expect(next).toEqual(Buffer.alloc(4));
        expect(fstatSync(fd).size).toBe(8 * PAGE_SIZE);
      } finally {
        closeSync(fd);
      }
    });

    it('throws with the errno code: EBADF for a closed fd; TypeError for a non-number', () => {
      const fd = openSync(join(dir, 'dense'), 'r');
      closeSync(fd);
      expect(() => dataExtents(fd)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'lseek' }));
      // (A TypeError of the addon's realm, not jest's: matched by name.)
      expect(() => dataExtents('3' as unknown as number)).toThrow(expect.objectContaining({ name: 'TypeError', message: 'dataExtents(fd) takes a file descriptor' }));
    });
  });

  describe('pure run arithmetic', () => {
    it('pageRunsOfExtents widens extents to whole pages, joins those sharing or touching a page, clips at the file size', () => {
      expect(pageRunsOfExtents([[10, 100], [PAGE_SIZE + 5, 1], [3 * PAGE_SIZE, PAGE_SIZE], [4 * PAGE_SIZE + 1, 10 * PAGE_SIZE]], 6 * PAGE_SIZE)).toEqual([
        { firstPage: 0, count: 2 },
        { firstPage: 3, count: 3 },
      ]);
      expect(() => pageRunsOfExtents([[PAGE_SIZE, 10], [0, 10]], 4 * PAGE_SIZE)).toThrow(DiffMemoryConversionError);
    });

    it('mergePageSegments: Diff runs win over the base; base parts around them keep their offsets in the base file', () => {
      // base pages file: [2,3,4,5] [9] → offsets 0..3, 4 (in pages); diff: [3], [5..9]
      const segments = mergePageSegments(
        [
          { firstPage: 2, count: 4 },
          { firstPage: 9, count: 1 },
        ],
        [
          { firstPage: 3, count: 1 },
          { firstPage: 5, count: 5 },
        ],
      );
      expect(segments).toEqual([
        { firstPage: 2, count: 1, from: 'base', sourceOffset: 0 },
        { firstPage: 3, count: 1, from: 'diff', sourceOffset: 3 * PAGE_SIZE },
        { firstPage: 4, count: 1, from: 'base', sourceOffset: 2 * PAGE_SIZE },
        { firstPage: 5, count: 5, from: 'diff', sourceOffset: 5 * PAGE_SIZE },
      ]);
    });
  });

  describe('changedPagesFromDiff on real sparse files', () => {
    /** memory.pages must be the expected pages in ascending order; memory.index their runs; the counts and sha256s match. */
    async function expectOutput(result: Awaited<ReturnType<typeof changedPagesFromDiff>>, expected: Map<number, Buffer>, runs: Array<[number, number]>) {
      const numbers = [...expected.keys()].sort((a, b) => a - b);
      const pages = await readFile(result.pagesPath);
      const index = await readFile(result.indexPath);
      expect(pages.equals(Buffer.concat(numbers.map((page) => expected.get(page)!)))).toBe(true);
      const indexRuns: Array<[number, number]> = [];
      for (let at = 0; at < index.length; at += 8) indexRuns.push([index.readUInt32LE(at), index.readUInt32LE(at + 4)]);
      expect(indexRuns).toEqual(runs);
      expect(result).toMatchObject({ pages: numbers.length, bytes: numbers.length * PAGE_SIZE, runs: runs.length, indexBytes: runs.length * 8 });
      expect(result.pagesSha256).toBe(sha256(pages));
      expect(result.indexSha256).toBe(sha256(index));
    }

    it('no base (restored from a template): exactly the written pages, a zeroed page kept, holes dropped', async () => {
      const written = new Map([
        [0, pageOf(0, 1)],
        [1, pageOf(1, 1)],
        [7, Buffer.alloc(PAGE_SIZE)],
        [200, pageOf(200, 1)],
        [255, pageOf(255, 1)],
      ]);
      const diffPath = await sparseFile(256, written);
      const result = await changedPagesFromDiff({ diffPath, out: out() });
      await expectOutput(result, written, [[0, 2], [7, 1], [200, 1], [255, 1]]);
      expect([result.diffPages, result.basePages]).toEqual([5, 0]);
    });

    it('with a base (restored from a checkpoint): base ∪ Diff, the Diff page wins where both have one, adjacent runs joined', async () => {
      const basePages = new Map([2, 3, 4, 5, 9, 40].map((page) => [page, pageOf(page, 1)] as [number, Buffer]));
      const diffWritten = new Map([3, 6, 7, 8, 41, 100].map((page) => [page, pageOf(page, 2)] as [number, Buffer]));
      const base = await changedFiles(basePages);
      const diffPath = await sparseFile(128, diffWritten);
      const result = await changedPagesFromDiff({ diffPath, base, out: out() });
      const expected = new Map([...basePages, ...diffWritten]);
      // 2..9 is one run (base 2,4,5,9 + diff 3,6,7,8), 40..41 another.
      await expectOutput(result, expected, [[2, 8], [40, 2], [100, 1]]);
      expect(expected.get(3)!.readUInt32LE(4)).toBe(2);
      expect([result.diffPages, result.basePages]).toEqual([6, 5]);
    });

    it('an extent edge inside a page keeps the whole page (its unwritten part reads as zeros)', async () => {
      const diffPath = await sparseFile(16, new Map());
      const fd = openSync(diffPath, 'r+');
      writeSync(fd, Buffer.from('kiln'), 0, 4, 5 * PAGE_SIZE + 100);
      closeSync(fd);
      const page5 = Buffer.alloc(PAGE_SIZE);
      page5.write('kiln', 100);
      await expectOutput(await changedPagesFromDiff({ diffPath, out: out() }), new Map([[5, page5]]), [[5, 1]]);
    });

    it('control: a fully dense Diff file (every page written) gives every page, in one run, byte for byte', async () => {
      const all = new Map(Array.from({ length: 32 }, (_, page) => [page, pageOf(page, 3)] as [number, Buffer]));
      const diffPath = join(dir, 'dense-diff');
      await writeFile(diffPath, Buffer.concat([...all.values()]));
      const result = await changedPagesFromDiff({ diffPath, out: out() });
      await expectOutput(result, all, [[0, 32]]);
      expect((await readFile(result.pagesPath)).equals(await readFile(diffPath))).toBe(true);
    });

    it('an empty Diff with no base: empty memory.pages and memory.index', async () => {
      const result = await changedPagesFromDiff({ diffPath: await sparseFile(64, new Map()), out: out() });
      await expectOutput(result, new Map(), []);
    });

    it('a malformed or truncated base fails with DiffMemoryConversionError and leaves no output', async () => {
      const diffPath = await sparseFile(16, new Map([[1, pageOf(1, 1)]]));
      const base = await changedFiles(new Map([[2, pageOf(2, 1)], [3, pageOf(3, 1)]]));
      await writeFile(base.pagesPath, pageOf(2, 1)); // the index lists two pages
      const target = out();
      await expect(changedPagesFromDiff({ diffPath, base, out: target })).rejects.toThrow(/bytes, its index lists/);
      await writeFile(base.indexPath, Buffer.from([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])); // out of order
      await expect(changedPagesFromDiff({ diffPath, base, out: target })).rejects.toBeInstanceOf(DiffMemoryConversionError);
      await expect(readFile(target.pagesPath)).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(readFile(target.indexPath)).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('an output file that already exists is refused and left as it was', async () => {
      const diffPath = await sparseFile(16, new Map([[1, pageOf(1, 1)]]));
      const target = out();
      await writeFile(target.pagesPath, 'not ours');
      await expect(changedPagesFromDiff({ diffPath, out: target })).rejects.toBeInstanceOf(DiffMemoryConversionError);
      expect(await readFile(target.pagesPath, 'utf8')).toBe('not ours');
    });
  });
});
