import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostTscKhz } from './host-tsc';

describe('hostTscKhz', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-tsc-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  async function cpuinfo(text: string): Promise<string> {
    const path = join(dir, `cpuinfo-${Math.random()}`);
    await writeFile(path, text);
    return path;
  }

  it('reads the first CPU when the TSC is invariant', async () => {
    const path = await cpuinfo('processor\t: 0\ncpu MHz\t\t: 2599.998\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n\nprocessor\t: 1\ncpu MHz\t\t: 1200.000\n');
    expect(await hostTscKhz(path)).toBe(2_599_998);
  });

  it('gives nothing when the TSC may change speed', async () => {
    expect(await hostTscKhz(await cpuinfo('processor\t: 0\ncpu MHz\t\t: 2599.998\nflags\t\t: fpu tsc\n'))).toBeUndefined();
  });
});
