import type { XattrCalls } from '../runtime/guest-kernel';

/**
 * envd's file metadata (envd >= 0.6.2): user-defined key/value pairs stored on a file as extended attributes
 * `user.e2b.<key>`. The `user.` namespace is the one the kernel lets ordinary files carry; `e2b.` keeps the keys apart
 * from other tools' `user.*` attributes, which are not metadata.
 */
export const METADATA_XATTR_PREFIX = 'user.e2b.';
/** The kernel limits a whole attribute name to 255 bytes. */
export const MAX_METADATA_KEY_BYTES = 255 - METADATA_XATTR_PREFIX.length;
/**
 * ext4 keeps all of an inode's attributes in one 4 KiB block, so envd caps the sum of (prefixed name + value) over
 * every key at 4096 bytes and refuses more up front rather than failing half-way through writing them.
 */
export const MAX_METADATA_TOTAL_BYTES = 4096;
/** How metadata travels on an upload: one `X-Metadata-<key>: <value>` request header per key. */
export const METADATA_HEADER_PREFIX = 'x-metadata-';

export type FileMetadata = Record<string, string>;

export class InvalidMetadataError extends Error {}

/** Metadata was asked for where it cannot be stored; the caller reports it rather than dropping the metadata. */
export class MetadataUnsupportedError extends Error {
  constructor(
    readonly path: string,
    reason: string,
  ) {
    super(`cannot store metadata on '${path}': ${reason}`);
  }
}

/** Errno codes that mean "this filesystem keeps no user extended attributes" (EOPNOTSUPP is ENOTSUP on Linux). */
const UNSUPPORTED_CODES = new Set(['ENOTSUP', 'EOPNOTSUPP']);

function errnoCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * envd's rules for a metadata set, checked before anything is written: keys non-empty, at most
 * MAX_METADATA_KEY_BYTES; keys and values printable US-ASCII (0x20-0x7E, what an HTTP header can carry); the whole
 * set at most MAX_METADATA_TOTAL_BYTES.
 */
export function validateMetadata(metadata: FileMetadata): void {
  let total = 0;
  for (const [key, value] of Object.entries(metadata)) {
    if (key === '') throw new InvalidMetadataError('metadata key must not be empty');
    if (key.length > MAX_METADATA_KEY_BYTES) {
      throw new InvalidMetadataError(`metadata key ${JSON.stringify(key)} exceeds ${MAX_METADATA_KEY_BYTES} bytes`);
    }
    assertPrintableAscii('key', key);
    assertPrintableAscii(`value for key ${JSON.stringify(key)}`, value);
    total += METADATA_XATTR_PREFIX.length + key.length + value.length;
  }
  if (total > MAX_METADATA_TOTAL_BYTES) {
    throw new InvalidMetadataError(`total metadata size ${total} exceeds ${MAX_METADATA_TOTAL_BYTES} bytes`);
  }
}

function assertPrintableAscii(label: string, text: string): void {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) {
      throw new InvalidMetadataError(
        `metadata ${label} contains non-printable-ASCII character 0x${c.toString(16).padStart(2, '0')} at offset ${i}`,
      );
    }
  }
}

/**
 * The metadata of an upload from its raw request headers (name, value, name, value...): every `X-Metadata-<key>`
 * header, prefix stripped and key lower-cased (as envd, whose Go server canonicalises header names). When a header
 * repeats, its first value counts; Node would join repeated headers with ", ".
 */
export function metadataFromHeaders(rawHeaders: readonly string[]): FileMetadata {
  const found = new Map<string, string>();
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i].toLowerCase();
    if (!name.startsWith(METADATA_HEADER_PREFIX)) continue;
    const key = name.slice(METADATA_HEADER_PREFIX.length);
    if (key !== '' && !found.has(key)) found.set(key, rawHeaders[i + 1]);
  }
  // fromEntries defines own properties, so even a key like "__proto__" stays data.
  return Object.fromEntries(found);
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Reads and replaces file metadata through the native addon's xattr calls. */
export class FileMetadataStore {
  /** `xattrs` is the native addon; without it no metadata is read and storing any is refused. */
  constructor(private readonly xattrs: XattrCalls | undefined) {}

  /**
   * The metadata of `path` (symlinks followed), or undefined when it has none. Best effort, as envd: a filesystem
   * without extended attributes, an entry that vanished or an unreadable attribute simply contributes nothing, so
   * Stat and ListDir never fail over metadata. Values that are not UTF-8 (set by other tools) are skipped: the
   * EntryInfo map carries strings.
   */
  async read(path: string): Promise<FileMetadata | undefined> {
    if (!this.xattrs) return undefined;
    let names: string[];
    try {
      names = await this.xattrs.listXattrs(path);
    } catch {
      return undefined;
    }
    const found = new Map<string, string>();
    for (const name of names) {
      if (!name.startsWith(METADATA_XATTR_PREFIX) || name.length === METADATA_XATTR_PREFIX.length) continue;
      try {
        found.set(name.slice(METADATA_XATTR_PREFIX.length), strictUtf8.decode(await this.xattrs.getXattr(path, name)));
      } catch {
        // Removed in the meantime, or not UTF-8.
      }
    }
    return found.size > 0 ? Object.fromEntries(found) : undefined;
  }

  /**
   * Makes `metadata` the file's whole metadata set, through the open descriptor `fd` (so a concurrent rename cannot
   * redirect it): `user.e2b.*` attributes not in the set are removed, as envd does on every upload; an overwrite
   * keeps the inode and with it the old attributes otherwise. An empty set only clears. Throws
   * MetadataUnsupportedError when the filesystem (or a missing addon) cannot keep a non-empty set.
   */
  async replace(fd: number, path: string, metadata: FileMetadata): Promise<void> {
    const wanted = Object.entries(metadata);
    if (!this.xattrs) {
      if (wanted.length > 0) throw new MetadataUnsupportedError(path, 'the guest agent was built without its native addon');
      return;
    }
    let existing: string[];
    try {
      existing = await this.xattrs.listXattrs(fd);
    } catch (err) {
      if (!UNSUPPORTED_CODES.has(errnoCode(err) ?? '')) throw err;
      // No extended attributes at all here: nothing to clear, and nowhere to store a non-empty set.
      if (wanted.length > 0) throw this.unsupported(path);
      return;
    }
    for (const name of existing) {
      if (!name.startsWith(METADATA_XATTR_PREFIX)) continue;
      if (Object.hasOwn(metadata, name.slice(METADATA_XATTR_PREFIX.length))) continue;
      await this.xattrs.removeXattr(fd, name).catch((err: unknown) => {
        if (errnoCode(err) !== 'ENODATA') throw err;
      });
    }
    for (const [key, value] of wanted) {
      try {
        await this.xattrs.setXattr(fd, METADATA_XATTR_PREFIX + key, value);
      } catch (err) {
        if (UNSUPPORTED_CODES.has(errnoCode(err) ?? '')) throw this.unsupported(path);
        throw err;
      }
    }
  }

  private unsupported(path: string): MetadataUnsupportedError {
    // tmpfs before Linux 6.6 is the common case in a guest (/tmp, /dev/shm): it keeps trusted.* and security.*
    // attributes but not user.* ones.
    return new MetadataUnsupportedError(path, 'its filesystem does not support user extended attributes (ENOTSUP)');
  }
}
