import type { Stats } from 'node:fs';
import { lstat, readlink, realpath, stat } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import { EntryInfoSchema, FileType, type EntryInfo } from '@kiln/proto/filesystem';
import type { SystemUserDirectory } from '../users/system-users';
import type { FileMetadataStore } from './file-metadata';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFREG = 0o100000;
const S_IFIFO = 0o010000;
const S_IFSOCK = 0o140000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

/**
 * Go's os.FileMode.String(), which envd sends as `permissions`: type letters ("d", "L" for symlink, "D", "p",
 * "S", "c" with "D", "u"/"g"/"t" for setuid/setgid/sticky) followed by rwxrwxrwx, "-" when no type letter applies.
 */
export function goModeString(mode: number): string {
  const type = mode & S_IFMT;
  let prefix = '';
  if (type === S_IFDIR) prefix += 'd';
  if (type === S_IFLNK) prefix += 'L';
  if (type === S_IFBLK || type === S_IFCHR) prefix += 'D';
  if (type === S_IFIFO) prefix += 'p';
  if (type === S_IFSOCK) prefix += 'S';
  if (mode & 0o4000) prefix += 'u';
  if (mode & 0o2000) prefix += 'g';
  if (type === S_IFCHR) prefix += 'c';
  if (mode & 0o1000) prefix += 't';
  if (prefix === '') prefix = '-';
  const rwx = 'rwxrwxrwx';
  let perms = '';
  for (let i = 0; i < 9; i++) perms += mode & (1 << (8 - i)) ? rwx[i] : '-';
  return prefix + perms;
}

function fileTypeOf(mode: number): FileType {
  const type = mode & S_IFMT;
  if (type === S_IFDIR) return FileType.DIRECTORY;
  if (type === S_IFREG) return FileType.FILE;
  if (type === S_IFLNK) return FileType.SYMLINK;
  return FileType.UNSPECIFIED;
}

export type EntryInfoInit = MessageInitShape<typeof EntryInfoSchema>;

/** Builds envd's EntryInfo for paths: ownership names from the user directory, metadata from extended attributes. */
export class EntryDescriber {
  constructor(
    private readonly users: SystemUserDirectory,
    private readonly metadata: FileMetadataStore,
  ) {}

  /**
   * EntryInfo as envd builds it from lstat: a symlink reports its own name, path and permissions, the type and mode
   * of what it points to, and its resolved target in symlink_target. Metadata is read through symlinks, as envd does.
   */
  async describe(path: string, info?: Stats): Promise<EntryInfo> {
    const own = info ?? (await lstat(path));
    let type = fileTypeOf(own.mode);
    let mode = own.mode & 0o777;
    let symlinkTarget: string | undefined;
    if (own.isSymbolicLink()) {
      symlinkTarget = await realpath(path).catch(async () => resolve(dirname(path), await readlink(path)));
      try {
        const target = await stat(path);
        type = fileTypeOf(target.mode);
        mode = target.mode & 0o777;
      } catch {
        type = FileType.UNSPECIFIED;
        mode = 0;
      }
    }
    const init: EntryInfoInit = {
      name: basename(path) || path,
      type,
      path,
      size: BigInt(own.size),
      mode,
      permissions: goModeString(own.mode),
      owner: this.users.userNameOf(own.uid),
      group: this.users.groupNameOf(own.gid),
      modifiedTime: timestampFromMs(Math.floor(own.mtimeMs)),
      symlinkTarget,
      metadata: (await this.metadata.read(path)) ?? {},
    };
    return create(EntryInfoSchema, init);
  }
}

/**
 * The JSON EntryInfo of the HTTP API (upload results): lower-case type names, as envd.yml shows, and `metadata`
 * only when the file has some (envd omits an empty map).
 */
export function entryJson(entry: EntryInfo): Record<string, unknown> {
  const typeName: Record<number, string> = {
    [FileType.FILE]: 'file',
    [FileType.DIRECTORY]: 'directory',
    [FileType.SYMLINK]: 'symlink',
  };
  const json: Record<string, unknown> = { path: entry.path, name: entry.name, type: typeName[entry.type] ?? 'unknown' };
  if (Object.keys(entry.metadata).length > 0) json.metadata = { ...entry.metadata };
  return json;
}
