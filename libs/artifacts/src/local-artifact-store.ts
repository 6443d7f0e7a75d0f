import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, copyFile, link, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ArtifactIntegrityError, ArtifactNotFoundError, ArtifactTooLargeError, InvalidArtifactKeyError } from './artifacts.errors';
import { assertArtifactKey, type ArtifactInfo, type ArtifactStore, type ArtifactWriteOptions } from './artifact-store';

/** Sidecar holding an artifact's recorded size and sha256 (`<file>.meta.json`); never an artifact key itself. */
const META_SUFFIX = '.meta.json';
const PARTIAL_MARK = '.partial-';

/**
 * The artifact store as a directory tree: `<root>/<key>` plus a sidecar with its sha256 and size. Writes go to a
 * temporary name and are renamed into place after the sidecar, so a reader sees a complete artifact or none.
 */
export class LocalArtifactStore implements ArtifactStore {
  constructor(readonly root: string) {}

  async write(key: string, body: Readable, options: ArtifactWriteOptions = {}): Promise<ArtifactInfo> {
    const path = this.pathOf(key);
    await mkdir(dirname(path), { recursive: true });
    const partial = `${path}${PARTIAL_MARK}${randomBytes(6).toString('hex')}`;
    const hash = createHash('sha256');
    let bytes = 0;
    const limit = options.maxBytes;
    const meter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        bytes += chunk.length;
        if (limit !== undefined && bytes > limit) return callback(new ArtifactTooLargeError(key, limit));
        hash.update(chunk);
        callback(null, chunk);
      },
    });
    try {
      await pipeline(body, meter, createWriteStream(partial, { mode: 0o644 }));
      const info: ArtifactInfo = { key, bytes, sha256: hash.digest('hex') };
      await writeFile(`${path}${META_SUFFIX}`, JSON.stringify({ bytes: info.bytes, sha256: info.sha256 }));
      await chmod(partial, 0o444);
      await rename(partial, path);
      return info;
    } finally {
      await rm(partial, { force: true });
    }
  }

  writeFile(key: string, sourcePath: string): Promise<ArtifactInfo> {
    return this.write(key, createReadStream(sourcePath));
  }

  async copy(fromKey: string, toKey: string): Promise<ArtifactInfo> {
    const recorded = await this.stat(fromKey);
    if (!recorded) throw new ArtifactNotFoundError(fromKey);
    const path = this.pathOf(toKey);
    await mkdir(dirname(path), { recursive: true });
    const partial = `${path}${PARTIAL_MARK}${randomBytes(6).toString('hex')}`;
    try {
      // Artifacts are read-only once written (0444, never rewritten in place): both keys may share the file.
      await link(this.pathOf(fromKey), partial).catch(async (error: NodeJS.ErrnoException) => {
        if (error.code !== 'EXDEV' && error.code !== 'EMLINK') throw error;
        await copyFile(this.pathOf(fromKey), partial);
        await chmod(partial, 0o444);
      });
      await writeFile(`${path}${META_SUFFIX}`, JSON.stringify({ bytes: recorded.bytes, sha256: recorded.sha256 }));
      await rename(partial, path);
      return { key: toKey, bytes: recorded.bytes, sha256: recorded.sha256 };
    } finally {
      await rm(partial, { force: true });
    }
  }

  async stat(key: string): Promise<ArtifactInfo | undefined> {
    const path = this.pathOf(key);
    const exists = await stat(path).then((s) => s.isFile(), () => false);
    if (!exists) return undefined;
    try {
      const meta = JSON.parse(await readFile(`${path}${META_SUFFIX}`, 'utf8')) as { bytes: number; sha256: string };
      return { key, bytes: meta.bytes, sha256: meta.sha256 };
    } catch {
      throw new ArtifactIntegrityError(`artifact ${key} has no readable record of its sha256`);
    }
  }

  async list(prefix: string): Promise<string[]> {
    const dir = this.prefixPath(prefix);
    const found: string[] = [];
    const walk = async (current: string): Promise<void> => {
      const entries = await readdir(current, { withFileTypes: true }).catch(() => []);
      for (const entry of entries) {
        const full = join(current, entry.name);
        if (entry.isDirectory()) await walk(full);
        else if (entry.isFile() && !entry.name.endsWith(META_SUFFIX) && !entry.name.includes(PARTIAL_MARK)) {
          found.push(relative(this.root, full));
        }
      }
    };
    await walk(dir);
    return found.sort();
  }

  async fetchTo(key: string, destinationPath: string, expectedSha256?: string): Promise<ArtifactInfo> {
    const recorded = await this.stat(key);
    if (!recorded) throw new ArtifactNotFoundError(key);
    const wanted = expectedSha256 ?? recorded.sha256;
    if (wanted !== recorded.sha256) {
      throw new ArtifactIntegrityError(`artifact ${key}: recorded sha256 ${recorded.sha256}, expected ${wanted}`);
    }
    await mkdir(dirname(destinationPath), { recursive: true });
    const partial = `${destinationPath}${PARTIAL_MARK}${randomBytes(6).toString('hex')}`;
    const hash = createHash('sha256');
    let bytes = 0;
    try {
      await pipeline(
        createReadStream(this.pathOf(key)),
        new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            bytes += chunk.length;
            hash.update(chunk);
            callback(null, chunk);
          },
        }),
        createWriteStream(partial, { mode: 0o644 }),
      );
      const actual = hash.digest('hex');
      if (actual !== wanted || bytes !== recorded.bytes) {
        throw new ArtifactIntegrityError(`artifact ${key}: read ${bytes} bytes hashing to ${actual}, recorded ${recorded.bytes} bytes ${wanted}`);
      }
      await rename(partial, destinationPath);
      return recorded;
    } finally {
      await rm(partial, { force: true });
    }
  }

  async removePrefix(prefix: string): Promise<void> {
    await rm(this.prefixPath(prefix), { recursive: true, force: true });
  }

  /** The local path of an artifact: hosts that share this directory may read it in place (after `stat`). */
  pathOf(key: string): string {
    if (assertArtifactKey(key).length === 0 || key.endsWith(META_SUFFIX) || key.includes(PARTIAL_MARK)) throw new InvalidArtifactKeyError(key);
    return join(this.root, key);
  }

  private prefixPath(prefix: string): string {
    if (assertArtifactKey(prefix, true).length === 0) throw new InvalidArtifactKeyError(prefix);
    return join(this.root, prefix.replace(/\/$/, ''));
  }
}
