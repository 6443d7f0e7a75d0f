import { watch, type FSWatcher, type Stats } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { EventType } from '@kiln/proto/filesystem';

export interface DirChange {
  /** Path relative to the watched directory, as envd reports it. */
  name: string;
  type: EventType;
  /** Absolute path, for callers that attach EntryInfo. */
  path: string;
}

interface KnownEntry {
  ino: number;
  mtimeMs: number;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  isDirectory: boolean;
}

/** Beyond this many watched directories a recursive watch stops descending rather than exhausting inotify. */
const MAX_WATCHED_DIRECTORIES = 8192;
/** inotify delivers a rename as two events; they are matched up within this window. */
const BATCH_WINDOW_MS = 5;

/**
 * Watches a directory (optionally its whole tree) with inotify through fs.watch, and turns Node's two event kinds
 * ('rename', 'change') back into fsnotify's CREATE / WRITE / REMOVE / RENAME / CHMOD. It keeps what it last saw of
 * every entry: a 'rename' for an entry thought absent is a creation, for one thought present a removal (or a rename
 * when an entry with the same inode appears in the same batch); a 'change' is a WRITE when content metadata moved
 * and a CHMOD when only mode or ownership did.
 */
export class DirWatcher {
  private readonly watchers = new Map<string, FSWatcher>();
  private readonly known = new Map<string, KnownEntry>();
  private pending: Array<{ kind: 'rename' | 'change'; path: string }> = [];
  private batchTimer: NodeJS.Timeout | undefined;
  private processing: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly root: string,
    private readonly recursive: boolean,
    private readonly onChange: (change: DirChange) => void,
    private readonly onError: (error: Error) => void,
  ) {}

  static async open(
    root: string,
    recursive: boolean,
    onChange: (change: DirChange) => void,
    onError: (error: Error) => void,
  ): Promise<DirWatcher> {
    const watcher = new DirWatcher(root, recursive, onChange, onError);
    await watcher.watchDirectory(root);
    return watcher;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.batchTimer);
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    this.known.clear();
  }

  private async watchDirectory(dir: string): Promise<void> {
    if (this.closed || this.watchers.has(dir) || this.watchers.size >= MAX_WATCHED_DIRECTORIES) return;
    const watcher = watch(dir, { persistent: false }, (kind, filename) => {
      if (filename === null || filename === '') return;
      this.enqueue(kind === 'change' ? 'change' : 'rename', join(dir, filename.toString()));
    });
    watcher.on('error', (err) => {
      // The watched directory itself went away; its removal is reported through the parent.
      watcher.close();
      this.watchers.delete(dir);
      if (dir === this.root) this.onError(err);
    });
    this.watchers.set(dir, watcher);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return;
    }
    for (const name of names) {
      const path = join(dir, name);
      const info = await lstat(path).catch(() => undefined);
      if (!info) continue;
      this.known.set(path, snapshot(info));
      if (this.recursive && info.isDirectory()) await this.watchDirectory(path);
    }
  }

  private enqueue(kind: 'rename' | 'change', path: string): void {
    if (this.closed) return;
    this.pending.push({ kind, path });
    this.batchTimer ??= setTimeout(() => {
      this.batchTimer = undefined;
      const batch = this.pending;
      this.pending = [];
      this.processing = this.processing.then(() => this.classify(batch)).catch((err: Error) => this.onError(err));
    }, BATCH_WINDOW_MS);
  }

  private async classify(batch: Array<{ kind: 'rename' | 'change'; path: string }>): Promise<void> {
    const changes: Array<DirChange & { identity?: string }> = [];
    for (const { kind, path } of batch) {
      if (this.closed) return;
      const before = this.known.get(path);
      const now = await lstat(path).catch(() => undefined);
      if (kind === 'rename') {
        if (before && !now) {
          this.forget(path);
          changes.push({ ...this.change(path, EventType.REMOVE), identity: identityOf(before) });
        } else if (before && now && before.ino === now.ino) {
          // A second event for an entry already recorded (e.g. create then a fast metadata event): nothing new.
          continue;
        } else if (now) {
          if (before) changes.push({ ...this.change(path, EventType.REMOVE), identity: identityOf(before) });
          this.known.set(path, snapshot(now));
          changes.push({ ...this.change(path, EventType.CREATE), identity: identityOf(snapshot(now)) });
          if (this.recursive && now.isDirectory()) await this.watchDirectory(path);
        } else {
          // Created and removed before we could look: both happened.
          changes.push(this.change(path, EventType.CREATE), this.change(path, EventType.REMOVE));
        }
      } else if (now) {
        const type =
          before && before.mtimeMs === now.mtimeMs && before.size === now.size &&
          (before.mode !== now.mode || before.uid !== now.uid || before.gid !== now.gid)
            ? EventType.CHMOD
            : EventType.WRITE;
        this.known.set(path, snapshot(now));
        changes.push(this.change(path, type));
      }
    }
    // An entry that vanished while the same inode, unchanged, appeared elsewhere was moved: fsnotify calls the old
    // name RENAME. Size and mtime are compared too, because a freed inode number is quickly reused by a new file.
    const created = new Set(changes.filter((c) => c.type === EventType.CREATE && c.identity).map((c) => c.identity));
    for (const c of changes) {
      if (c.type === EventType.REMOVE && c.identity !== undefined && created.has(c.identity)) c.type = EventType.RENAME;
      if (!this.closed) this.onChange({ name: c.name, type: c.type, path: c.path });
    }
  }

  private forget(path: string): void {
    const prefix = path + sep;
    for (const key of this.known.keys()) if (key === path || key.startsWith(prefix)) this.known.delete(key);
    for (const [dir, w] of this.watchers) {
      if (dir === path || dir.startsWith(prefix)) {
        w.close();
        this.watchers.delete(dir);
      }
    }
  }

  private change(path: string, type: EventType): DirChange {
    return { name: relative(this.root, path), type, path };
  }
}

function snapshot(info: Stats): KnownEntry {
  return {
    ino: info.ino,
    mtimeMs: info.mtimeMs,
    size: info.size,
    mode: info.mode,
    uid: info.uid,
    gid: info.gid,
    isDirectory: info.isDirectory(),
  };
}

function identityOf(entry: KnownEntry): string {
  return `${entry.ino}:${entry.size}:${entry.mtimeMs}`;
}
