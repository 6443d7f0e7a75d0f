import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { applyChangedPages, captureChangedPages, findGuestRamAreas, PAGE_SIZE } from './guest-memory-pages';

/**
 * A stand-in VMM: python maps a file MAP_PRIVATE (as QEMU maps a clone's memory file), then follows commands on stdin:
 * `write <page> <hex byte>` fills a page with a byte, `hash` prints the sha256 of the whole mapping. The real thing
 * (QEMU and a guest) is covered by test/vm/sandbox-checkpoints.spec.ts; this checks the page bookkeeping exactly.
 */
const STAND_IN = `
import mmap, os, sys, hashlib
f = open(sys.argv[1], 'r+b')
m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
print('ready', flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == 'write':
        page, value = int(cmd[1]), int(cmd[2], 16)
        m[page * 4096:(page + 1) * 4096] = bytes([value]) * 4096
        print('ok', flush=True)
    elif cmd[0] == 'read':
        m[int(cmd[1]) * 4096]
        print('ok', flush=True)
    elif cmd[0] == 'hash':
        print(hashlib.sha256(m[:]).hexdigest(), flush=True)
`;

class StandInVmm {
  private readonly lines: string[] = [];
  private waiting: ((line: string) => void) | undefined;
  private buffer = '';

  private constructor(readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      this.buffer += chunk;
      let newline: number;
      while ((newline = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, newline);
        this.buffer = this.buffer.slice(newline + 1);
        if (this.waiting) {
          const resolve = this.waiting;
          this.waiting = undefined;
          resolve(line);
        } else {
          this.lines.push(line);
        }
      }
    });
  }

  static async start(memoryFile: string): Promise<StandInVmm> {
    const vmm = new StandInVmm(spawn('python3', ['-c', STAND_IN, memoryFile]));
    expect(await vmm.next()).toBe('ready');
    return vmm;
  }

  get pid(): number {
    return this.child.pid!;
  }

  next(): Promise<string> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    return new Promise((resolve) => (this.waiting = resolve));
  }

  async command(text: string): Promise<string> {
    this.child.stdin.write(`${text}\n`);
    return this.next();
  }

  stop(): void {
    this.child.kill('SIGKILL');
  }
}

describe('guest memory pages (a private file mapping in a stand-in VMM)', () => {
  // Each stand-in is a python start-up: seconds on a loaded 2-core host.
  jest.setTimeout(30_000);
  const PAGES = 256;
  let dir: string;
  let memoryFile: string;
  const running: StandInVmm[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-pages-'));
    memoryFile = join(dir, 'memory');
    await writeFile(memoryFile, randomBytes(PAGES * PAGE_SIZE));
  });

  afterEach(() => {
    for (const vmm of running.splice(0)) vmm.stop();
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const start = async () => {
    const vmm = await StandInVmm.start(memoryFile);
    running.push(vmm);
    return vmm;
  };

  it('keeps exactly the pages written (not those only read), and a second VMM given them holds identical memory', async () => {
    const original = await readFile(memoryFile);
    const source = await start();
    const written = [3, 4, 5, 100, 255];
    for (const page of written) expect(await source.command(`write ${page} ${((page % 250) + 1).toString(16)}`)).toBe('ok');
    // Read, never written: still the file's page, not worth a byte.
    expect(await source.command('read 50')).toBe('ok');
    const sourceHash = await source.command('hash');

    const areas = await findGuestRamAreas(source.pid, memoryFile);
    expect(areas).toEqual([expect.objectContaining({ fileOffset: 0 })]);
    const files = { pagesPath: join(dir, 'a.pages'), indexPath: join(dir, 'a.index') };
    const captured = await captureChangedPages(source.pid, areas, files);
    expect(captured).toMatchObject({ pages: written.length, bytes: written.length * PAGE_SIZE, runs: 3, indexBytes: 3 * 8 });
    const pagesFile = await readFile(files.pagesPath);
    expect(captured.pagesSha256).toBe(createHash('sha256').update(pagesFile).digest('hex'));
    expect(pagesFile.subarray(0, PAGE_SIZE).every((byte) => byte === 4)).toBe(true);

    const target = await start();
    // The control: a fresh mapping holds the file's memory, not the source's.
    expect(await target.command('hash')).toBe(createHash('sha256').update(original).digest('hex'));
    expect(await target.command('hash')).not.toBe(sourceHash);
    expect(await applyChangedPages(target.pid, await findGuestRamAreas(target.pid, memoryFile), files)).toEqual({ pages: written.length });
    expect(await target.command('hash')).toBe(sourceHash);
    // Neither VMM ever wrote the shared file.
    expect((await readFile(memoryFile)).equals(original)).toBe(true);
  });

  it('captures a VMM that was itself restored: the pages it was given plus its own, so pause over pause loses nothing', async () => {
    const first = await start();
    expect(await first.command('write 10 aa')).toBe('ok');
    const once = { pagesPath: join(dir, 'b.pages'), indexPath: join(dir, 'b.index') };
    await captureChangedPages(first.pid, await findGuestRamAreas(first.pid, memoryFile), once);

    const second = await start();
    await applyChangedPages(second.pid, await findGuestRamAreas(second.pid, memoryFile), once);
    expect(await second.command('write 11 bb')).toBe('ok');
    const secondHash = await second.command('hash');
    const twice = { pagesPath: join(dir, 'c.pages'), indexPath: join(dir, 'c.index') };
    expect(await captureChangedPages(second.pid, await findGuestRamAreas(second.pid, memoryFile), twice)).toMatchObject({ pages: 2, runs: 1 });

    const third = await start();
    await applyChangedPages(third.pid, await findGuestRamAreas(third.pid, memoryFile), twice);
    expect(await third.command('hash')).toBe(secondHash);
  });

  it('refuses a pages file that does not match its index, and an index out of order', async () => {
    const vmm = await start();
    const files = { pagesPath: join(dir, 'd.pages'), indexPath: join(dir, 'd.index') };
    const index = Buffer.alloc(8);
    index.writeUInt32LE(1, 0);
    index.writeUInt32LE(2, 4);
    await writeFile(files.indexPath, index);
    await writeFile(files.pagesPath, Buffer.alloc(PAGE_SIZE));
    const areas = await findGuestRamAreas(vmm.pid, memoryFile);
    await expect(applyChangedPages(vmm.pid, areas, files)).rejects.toThrow(/4096 bytes, its index lists 8192/);

    const unordered = Buffer.alloc(16);
    unordered.writeUInt32LE(5, 0);
    unordered.writeUInt32LE(1, 4);
    unordered.writeUInt32LE(2, 8);
    unordered.writeUInt32LE(1, 12);
    await writeFile(files.indexPath, unordered);
    await expect(applyChangedPages(vmm.pid, areas, files)).rejects.toThrow(/out of order/);
    expect((await stat(files.pagesPath)).size).toBe(PAGE_SIZE);
  });

  it('says so when the process does not map the memory file', async () => {
    const vmm = await start();
    await writeFile(join(dir, 'other'), 'x');
    await expect(findGuestRamAreas(vmm.pid, join(dir, 'other'))).rejects.toThrow(/does not map/);
  });
});
