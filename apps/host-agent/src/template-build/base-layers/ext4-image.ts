import { open } from 'node:fs/promises';
import { runTool } from './tool-runner';

const MIB = 1024 * 1024;
/** Free space a base layer starts with: the build's steps run on it (the build executor may grow its copy further). */
const HEADROOM_FRACTION = 0.25;
const HEADROOM_MIN_BYTES = 256 * MIB;

/**
 * Writes `rootfsDir` into a new raw ext4 image (mke2fs -d: userspace, owners, modes and xattrs kept), sized to the
 * content plus headroom, with inodes for the content's files and as many again.
 */
export async function makeExt4Image(rootfsDir: string, imagePath: string, signal: AbortSignal): Promise<{ bytes: number }> {
  const { stdout: du } = await runTool('du', ['-s', '-x', '-B1', rootfsDir], { signal, timeoutMs: 10 * 60_000 });
  const used = Number(du.split(/\s+/)[0]);
  const { stdout: count } = await runTool('find', [rootfsDir, '-xdev', '-printf', '.'], { signal, timeoutMs: 10 * 60_000 });
  const files = count.length;
  const inodes = Math.max(16_384, files * 2);
  // ext4 metadata: 256 bytes per inode plus the journal and group descriptors (a few % of the size).
  const content = used + inodes * 256;
  const bytes = Math.ceil((content * 1.08 + Math.max(HEADROOM_MIN_BYTES, content * HEADROOM_FRACTION) + 64 * MIB) / MIB) * MIB;
  const handle = await open(imagePath, 'w', 0o644);
  try {
    await handle.truncate(bytes);
  } finally {
    await handle.close();
  }
  await runTool('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'kiln-root', '-m', '1', '-N', String(inodes), '-d', rootfsDir, imagePath], {
    signal,
    timeoutMs: 30 * 60_000,
  });
  return { bytes };
}
