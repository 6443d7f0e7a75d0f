import { randomUUID } from 'node:crypto';
import { cp, lstat, readdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Stats } from 'node:fs';
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import type { MessageInitShape } from '@bufbuild/protobuf';
import {
  EventType,
  Filesystem,
  type EntryInfo,
  type FilesystemEventSchema,
} from '@kiln/proto/filesystem';
import { EventQueue } from '../streaming/event-queue';
import { keepaliveIntervalMs, requestUser } from '../rpc/rpc-context';
import type { AgentState } from '../runtime/agent-state';
import type { SystemUser, SystemUserDirectory } from '../users/system-users';
import { assertAccess, assertCanChangeEntriesOf, assertReachable, permits } from './access-check';
import type { EntryDescriber } from './entry-info';
import { DirWatcher, type DirChange } from './dir-watcher';
import { ensureDirectoryFor } from './directory-creation';
import { fsConnectError } from './fs-errors';
import { networkMountOf } from './network-mounts';
import { resolveUserPath } from './path-resolution';

type FilesystemEventInit = MessageInitShape<typeof FilesystemEventSchema>;

/** A polling watcher keeps at most this many undelivered events; older ones are dropped first. */
const MAX_BUFFERED_WATCHER_EVENTS = 10_000;
const MAX_POLLING_WATCHERS = 256;
/** A WatchDir client this far behind is cut off rather than letting its backlog grow without bound. */
const MAX_STREAM_BACKLOG_EVENTS = 10_000;

interface PollingWatcher {
  watcher: DirWatcher;
  events: FilesystemEventInit[];
}

/** Implements envd's `filesystem.Filesystem`. Polling watchers live here until removed (or the agent stops). */
export class FilesystemService {
  private readonly pollingWatchers = new Map<string, PollingWatcher>();

  constructor(
    private readonly state: AgentState,
    private readonly users: SystemUserDirectory,
    private readonly entries: EntryDescriber,
  ) {}

  closeAll(): void {
    for (const { watcher } of this.pollingWatchers.values()) watcher.close();
    this.pollingWatchers.clear();
  }

  impl(): ServiceImpl<typeof Filesystem> {
    const userOf = (ctx: HandlerContext) => requestUser(ctx, this.state, this.users);
    return {
      stat: async (req, ctx) => {
        const user = userOf(ctx);
        const path = resolveUserPath(req.path, user);
        try {
          await assertReachable(user, path);
          return { entry: await this.entries.describe(path) };
        } catch (err) {
          throw fsConnectError(err, `error getting file info for '${path}'`);
        }
      },

      makeDir: async (req, ctx) => {
        const user = userOf(ctx);
        const path = resolveUserPath(req.path, user);
        try {
          await assertReachable(user, path);
          const existing = await stat(path).catch(() => undefined);
          if (existing?.isDirectory()) throw new ConnectError(`directory '${path}' already exists`, Code.AlreadyExists);
          if (existing) throw new ConnectError(`path '${path}' already exists and is not a directory`, Code.InvalidArgument);
          await ensureDirectoryFor(user, path);
          return { entry: await this.entries.describe(path) };
        } catch (err) {
          throw fsConnectError(err, `error creating directory '${path}'`);
        }
      },

      move: async (req, ctx) => {
        const user = userOf(ctx);
        const source = resolveUserPath(req.source, user);
        const destination = resolveUserPath(req.destination, user);
        try {
          await assertReachable(user, source);
          await lstat(source);
          await assertCanChangeEntriesOf(user, dirname(source));
          await ensureDirectoryFor(user, dirname(destination));
          await assertCanChangeEntriesOf(user, dirname(destination));
          await moveEntry(source, destination);
          return { entry: await this.entries.describe(destination) };
        } catch (err) {
          throw fsConnectError(err, `error moving '${source}' to '${destination}'`);
        }
      },

      listDir: async (req, ctx) => {
        const user = userOf(ctx);
        const path = resolveUserPath(req.path, user);
        const depth = Math.max(1, req.depth);
        try {
          await assertReachable(user, path);
          const info = await stat(path);
          if (!info.isDirectory()) throw new ConnectError(`path '${path}' is not a directory`, Code.InvalidArgument);
          await assertAccess(user, path, 'read');
          const entries: EntryInfo[] = [];
          await this.walk(path, depth, user, entries);
          return { entries };
        } catch (err) {
          throw fsConnectError(err, `error listing directory '${path}'`);
        }
      },

      remove: async (req, ctx) => {
        const user = userOf(ctx);
        const path = resolveUserPath(req.path, user);
        try {
          await assertReachable(user, path);
          const exists = await lstat(path).then(() => true, () => false);
          if (exists) await assertCanChangeEntriesOf(user, dirname(path));
          await rm(path, { recursive: true, force: true });
          return {};
        } catch (err) {
          throw fsConnectError(err, `error removing '${path}'`);
        }
      },

      watchDir: (req, ctx) => this.watchStream(req, ctx),

      createWatcher: async (req, ctx) => {
        const user = userOf(ctx);
        const path = await this.watchablePath(req.path, user, req.allowNetworkMounts);
        if (this.pollingWatchers.size >= MAX_POLLING_WATCHERS) {
          throw new ConnectError('too many watchers; remove some first', Code.ResourceExhausted);
        }
        // No entropy cache: Node's pre-drawn UUID bytes would be the same in every clone of a snapshot.
        const id = randomUUID({ disableEntropyCache: true });
        const events: FilesystemEventInit[] = [];
        // Entry info takes a stat per event; chaining keeps the events in the order they happened.
        let delivered: Promise<void> = Promise.resolve();
        try {
          const watcher = await DirWatcher.open(
            path,
            req.recursive,
            (change) => {
              delivered = delivered
                .then(() => this.toEvent(change, req.includeEntry))
                .then((event) => {
                  events.push(event);
                  if (events.length > MAX_BUFFERED_WATCHER_EVENTS) events.shift();
                });
            },
            () => undefined,
          );
          this.pollingWatchers.set(id, { watcher, events });
        } catch (err) {
          throw fsConnectError(err, `error watching '${path}'`);
        }
        return { watcherId: id };
      },

      getWatcherEvents: async (req) => {
        const found = this.pollingWatchers.get(req.watcherId);
        if (!found) throw new ConnectError(`watcher '${req.watcherId}' not found`, Code.NotFound);
        return { events: found.events.splice(0) };
      },

      removeWatcher: async (req) => {
        const found = this.pollingWatchers.get(req.watcherId);
        if (!found) throw new ConnectError(`watcher '${req.watcherId}' not found`, Code.NotFound);
        found.watcher.close();
        this.pollingWatchers.delete(req.watcherId);
        return {};
      },
    };
  }

  private async *watchStream(
    req: { path: string; recursive: boolean; includeEntry: boolean; allowNetworkMounts: boolean },
    ctx: HandlerContext,
  ): AsyncGenerator<MessageInitShape<(typeof Filesystem)['method']['watchDir']['output']>> {
    const user = requestUser(ctx, this.state, this.users);
    const path = await this.watchablePath(req.path, user, req.allowNetworkMounts);
    const queue = new EventQueue<DirChange | Error>();
    let overflowed = false;
    let watcher: DirWatcher;
    try {
      watcher = await DirWatcher.open(
        path,
        req.recursive,
        (change) => {
          if (queue.length < MAX_STREAM_BACKLOG_EVENTS) queue.push(change);
          else if (!overflowed) {
            overflowed = true;
            queue.push(new BacklogOverflow());
            queue.close();
          }
        },
        (e) => queue.push(e),
      );
    } catch (err) {
      throw fsConnectError(err, `error watching '${path}'`);
    }
    const idleMs = keepaliveIntervalMs(ctx);
    try {
      yield { event: { case: 'start', value: {} } };
      for (;;) {
        const next = await queue.pull(idleMs, ctx.signal);
        if (ctx.signal.aborted || next.kind === 'closed') return;
        if (next.kind === 'idle') {
          yield { event: { case: 'keepalive', value: {} } };
          continue;
        }
        if (next.item instanceof BacklogOverflow) {
          throw new ConnectError(`more than ${MAX_STREAM_BACKLOG_EVENTS} unread events; watch again`, Code.ResourceExhausted);
        }
        if (next.item instanceof Error) throw fsConnectError(next.item, `watching '${path}' failed`);
        yield { event: { case: 'filesystem', value: await this.toEvent(next.item, req.includeEntry) } };
      }
    } finally {
      watcher.close();
    }
  }

  /**
   * The directory a watch may be put on. As envd >= 0.6.4: a directory on a network filesystem (NFS, CIFS/SMB, FUSE)
   * is refused unless the request allows network mounts, since inotify misses changes made elsewhere.
   */
  private async watchablePath(requested: string, user: SystemUser, allowNetworkMounts: boolean): Promise<string> {
    const path = resolveUserPath(requested, user);
    try {
      await assertReachable(user, path);
      const info = await stat(path);
      if (!info.isDirectory()) throw new ConnectError(`path '${path}' is not a directory`, Code.InvalidArgument);
      await assertAccess(user, path, 'read');
      if (!allowNetworkMounts) {
        const network = await networkMountOf(path);
        if (network) {
          throw new ConnectError(
            `cannot watch path on network filesystem (${network}): ${path}; allow network mounts to watch it anyway`,
            Code.InvalidArgument,
          );
        }
      }
    } catch (err) {
      throw fsConnectError(err, `error watching '${path}'`);
    }
    return path;
  }

  private async toEvent(change: DirChange, includeEntry: boolean): Promise<FilesystemEventInit> {
    const event: FilesystemEventInit = { name: change.name, type: change.type };
    if (includeEntry && change.type !== EventType.REMOVE && change.type !== EventType.RENAME) {
      event.entry = await this.entries.describe(change.path).catch(() => undefined);
    }
    return event;
  }

  private async walk(dir: string, depthLeft: number, user: SystemUser, out: EntryInfo[]): Promise<void> {
    const names = (await readdir(dir)).sort();
    for (const name of names) {
      const path = join(dir, name);
      let info: Stats;
      try {
        info = await lstat(path);
      } catch {
        continue; // Removed while we listed.
      }
      out.push(await this.entries.describe(path, info));
      if (depthLeft > 1 && info.isDirectory() && permits(user, info, 'read') && permits(user, info, 'search')) {
        await this.walk(path, depthLeft - 1, user, out);
      }
    }
  }
}

class BacklogOverflow extends Error {}

/** rename(2), or copy-then-delete when source and destination are on different filesystems. */
async function moveEntry(source: string, destination: string): Promise<void> {
  try {
    await rename(source, destination);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await cp(source, destination, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
    await rm(source, { recursive: true, force: true });
  }
}
