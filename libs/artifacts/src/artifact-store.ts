import type { Readable } from 'node:stream';

/** What the store records of every artifact: its size and sha256, computed as it was written. */
export interface ArtifactInfo {
  key: string;
  bytes: number;
  sha256: string;
}

export interface ArtifactWriteOptions {
  /** Refuse (and discard) a write whose body grows past this many bytes. */
  maxBytes?: number;
}

/**
 * Where build inputs (uploaded COPY archives) and built templates live between the services: written once under a
 * key (`files/<team>/<hash>.tar`, `templates/<template>/<build>/<file>`), read by whoever needs them, each read
 * verified against the sha256 recorded at write time. A local directory by default; an S3-compatible bucket is the
 * same interface.
 */
export interface ArtifactStore {
  /** Streams `body` to `key`, hashing as it goes; the artifact appears atomically, only when complete. */
  write(key: string, body: Readable, options?: ArtifactWriteOptions): Promise<ArtifactInfo>;
  /** Copies a local file in (as write). */
  writeFile(key: string, sourcePath: string): Promise<ArtifactInfo>;
  /**
   * Makes `toKey` an artifact with the bytes (and recorded sha256) of `fromKey` without reading them again: a
   * rebuild whose result is unchanged publishes its files this way. ArtifactNotFoundError when there is no `fromKey`.
   */
  copy(fromKey: string, toKey: string): Promise<ArtifactInfo>;
  /** The recorded size and sha256, or undefined when there is no such artifact. */
  stat(key: string): Promise<ArtifactInfo | undefined>;
  /** Keys under a prefix (`templates/t1/`), sorted. */
  list(prefix: string): Promise<string[]>;
  /**
   * Copies the artifact to a local path (atomically: a partial file never appears there), verifying the bytes against
   * `expectedSha256` (or the recorded sha256): ArtifactIntegrityError when they differ, and nothing is left behind.
   */
  fetchTo(key: string, destinationPath: string, expectedSha256?: string): Promise<ArtifactInfo>;
  /** Removes every artifact under a prefix; removing nothing is not an error. */
  removePrefix(prefix: string): Promise<void>;
}

export const ARTIFACT_STORE = Symbol('ARTIFACT_STORE');

const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

/** Keys are `/`-separated segments of safe characters: never `..`, never absolute, never empty. */
export function assertArtifactKey(key: string, prefix = false): string[] {
  const trimmed = prefix ? key.replace(/\/$/, '') : key;
  const segments = trimmed.split('/');
  if (typeof key !== 'string' || key.length > 1024 || segments.some((s) => !SEGMENT.test(s) || s.includes('..'))) {
    return [];
  }
  return segments;
}
