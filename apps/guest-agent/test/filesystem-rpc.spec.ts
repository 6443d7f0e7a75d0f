import { spawnSync } from 'node:child_process';
import { appendFile, mkdir, rm, stat, unlink, writeFile, symlink, chown } from 'node:fs/promises';
import { Code, ConnectError } from '@connectrpc/connect';
import { EventType, FileType, type EntryInfo, type WatchDirResponse } from '@kiln/proto/filesystem';
import { RunningAgent, scratchDirName } from './support/running-agent';

const codeOf = async (p: Promise<unknown>) => ConnectError.from(await p.then(() => undefined, (e: unknown) => e)).code;

describe('filesystem.Filesystem over Connect', () => {
  let agent: RunningAgent;
  let dir: string;

  beforeAll(async () => {
    agent = await RunningAgent.start();
    dir = scratchDirName('fs');
    await mkdir(dir, { recursive: true });
    await chown(dir, 1001, 1001).catch(() => undefined);
  });

  afterAll(async () => {
    await agent.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('stats a file with envd EntryInfo fields', async () => {
    const path = `${dir}/hello.txt`;
    await writeFile(path, 'hello', { mode: 0o644 });
    const { entry } = await agent.filesystemClient().stat({ path });
    expect(entry).toMatchObject({
      name: 'hello.txt',
      type: FileType.FILE,
      path,
      size: 5n,
      mode: 0o644,
      permissions: '-rw-r--r--',
      owner: 'root',
      group: 'root',
    });
    expect(Number(entry!.modifiedTime!.seconds)).toBeGreaterThan(Date.now() / 1000 - 60);
  });

  it('makes directories (as the user, with parents), lists with depth, moves and removes', async () => {
    const fs = agent.filesystemClient();
    const { entry } = await fs.makeDir({ path: `${dir}/a/b/c` });
    expect(entry).toMatchObject({ type: FileType.DIRECTORY, permissions: 'drwxr-xr-x', owner: 'user', group: 'user' });
    expect(await codeOf(fs.makeDir({ path: `${dir}/a/b/c` }))).toBe(Code.AlreadyExists);
    await writeFile(`${dir}/a/top.txt`, 'x');
    await writeFile(`${dir}/a/b/mid.txt`, 'y');
    await symlink(`${dir}/a/top.txt`, `${dir}/a/link`);

    const shallow = await fs.listDir({ path: `${dir}/a`, depth: 1 });
    expect(shallow.entries.map((e) => e.name).sort()).toEqual(['b', 'link', 'top.txt']);
    const link = shallow.entries.find((e) => e.name === 'link')!;
    expect(link.symlinkTarget).toBe(`${dir}/a/top.txt`);
    expect(link.type).toBe(FileType.FILE);
    expect(link.permissions.startsWith('L')).toBe(true);

    const deep = await fs.listDir({ path: `${dir}/a`, depth: 3 });
    expect(deep.entries.map((e) => e.path).sort()).toEqual(
      [`${dir}/a/b`, `${dir}/a/b/c`, `${dir}/a/b/mid.txt`, `${dir}/a/link`, `${dir}/a/top.txt`].sort(),
    );

    const moved = await fs.move({ source: `${dir}/a/top.txt`, destination: `${dir}/moved/top.txt` });
    expect(moved.entry).toMatchObject({ name: 'top.txt', path: `${dir}/moved/top.txt`, type: FileType.FILE });
    expect(await codeOf(fs.stat({ path: `${dir}/a/top.txt` }))).toBe(Code.NotFound);

    await fs.remove({ path: `${dir}/a` });
    expect(await codeOf(fs.stat({ path: `${dir}/a` }))).toBe(Code.NotFound);
  });

  it('resolves relative and ~ paths against the user home', async () => {
    const name = dir.split('/').pop()!;
    const viaTilde = await agent.filesystemClient().stat({ path: `~/${name}` });
    const viaRelative = await agent.filesystemClient().stat({ path: name });
    expect(viaTilde.entry?.path).toBe(dir);
    expect(viaRelative.entry?.path).toBe(dir);
  });

  it('answers envd error codes for missing, wrong-type and forbidden paths', async () => {
    const fs = agent.filesystemClient();
    expect(await codeOf(fs.stat({ path: `${dir}/missing` }))).toBe(Code.NotFound);
    expect(await codeOf(fs.listDir({ path: `${dir}/missing`, depth: 1 }))).toBe(Code.NotFound);
    await writeFile(`${dir}/plain`, '');
    expect(await codeOf(fs.listDir({ path: `${dir}/plain`, depth: 1 }))).toBe(Code.InvalidArgument);
    expect(await codeOf(fs.makeDir({ path: `${dir}/plain` }))).toBe(Code.InvalidArgument);
    expect(await codeOf(fs.move({ source: `${dir}/missing`, destination: `${dir}/x` }))).toBe(Code.NotFound);
    // A root-only (0700) directory: the default user may not look inside; root may.
    const privateDir = `/tmp/kiln-ga-private-${process.pid}`;
    await mkdir(privateDir, { mode: 0o700 });
    try {
      expect(await codeOf(fs.listDir({ path: privateDir, depth: 1 }))).toBe(Code.PermissionDenied);
      expect(await codeOf(fs.makeDir({ path: `${privateDir}/kiln-forbidden` }))).toBe(Code.PermissionDenied);
      expect(await codeOf(fs.stat({ path: `${privateDir}/anything` }))).toBe(Code.PermissionDenied);
      await expect(agent.filesystemClient({ user: 'root' }).listDir({ path: privateDir, depth: 1 })).resolves.toBeDefined();
    } finally {
      await rm(privateDir, { recursive: true, force: true });
    }
    expect(await codeOf(fs.remove({ path: '/etc/hostname' }))).toBe(Code.PermissionDenied);
  });

  it('streams create, write, chmod, rename and remove made by a command (WatchDir), recursively when asked', async () => {
    const watched = `${dir}/watched`;
    await mkdir(`${watched}/sub`, { recursive: true });
    const abort = new AbortController();
    const events: Array<{ name: string; type: EventType }> = [];
    const stream = agent.filesystemClient().watchDir({ path: watched, recursive: true }, { signal: abort.signal });
    const iterator = stream[Symbol.asyncIterator]();
    const first = (await iterator.next()).value as WatchDirResponse;
    expect(first.event.case).toBe('start');
    const reading = (async () => {
      try {
        for (;;) {
          const next = await iterator.next();
          if (next.done) return;
          const event = next.value.event;
          if (event.case === 'filesystem') events.push({ name: event.value.name, type: event.value.type });
        }
      } catch {
        // Aborted at the end of the test.
      }
    })();

    const script = `cd ${watched} && echo one > f.txt && sleep 0.2 && echo two >> f.txt && sleep 0.2 && chmod 600 f.txt && sleep 0.2 && mv f.txt g.txt && sleep 0.2 && rm g.txt && echo deep > sub/g.txt`;
    for await (const _ of agent.processClient({ user: 'root' }).start({ process: { cmd: '/bin/bash', args: ['-c', script], envs: {} } })) {
      // Drain until the command ends.
    }
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline && !events.some((e) => e.name === 'sub/g.txt')) await new Promise((r) => setTimeout(r, 50));
    abort.abort();
    await reading;

    const forF = events.filter((e) => e.name === 'f.txt').map((e) => e.type);
    expect(forF).toContain(EventType.CREATE);
    expect(forF).toContain(EventType.WRITE);
    expect(forF).toContain(EventType.CHMOD);
    expect(forF).toContain(EventType.RENAME);
    expect(forF.indexOf(EventType.CREATE)).toBeLessThan(forF.indexOf(EventType.RENAME));
    const forG = events.filter((e) => e.name === 'g.txt').map((e) => e.type);
    expect(forG).toEqual([EventType.CREATE, EventType.REMOVE]);
    expect(events.filter((e) => e.name === 'sub/g.txt').map((e) => e.type)).toContain(EventType.CREATE);
  });

  it('makes directories under a root-owned parent for the user, owned by the user (as envd)', async () => {
    const top = `/kiln-ga-mkdir-${process.pid}-${Date.now()}`;
    try {
      const { entry } = await agent.filesystemClient().makeDir({ path: `${top}/a/b` });
      expect(entry).toMatchObject({ path: `${top}/a/b`, type: FileType.DIRECTORY, owner: 'user', group: 'user' });
      const uid = Number(spawnSync('id', ['-u', 'user'], { encoding: 'utf8' }).stdout.trim());
      for (const created of [top, `${top}/a`, `${top}/a/b`]) expect((await stat(created)).uid).toBe(uid);
    } finally {
      await rm(top, { recursive: true, force: true });
    }
  });

  it('shows user.e2b.* attributes set by other tools as metadata in Stat and ListDir, and nothing else', async () => {
    const path = `${dir}/tagged.txt`;
    await writeFile(path, 't');
    const set = spawnSync('python3', ['-c', `import os; os.setxattr(${JSON.stringify(path)}, 'user.e2b.author', b'mish'); os.setxattr(${JSON.stringify(path)}, 'user.plain', b'x')`]);
    expect(set.status).toBe(0);
    const fs = agent.filesystemClient();
    expect((await fs.stat({ path })).entry?.metadata).toEqual({ author: 'mish' });
    const listed = await fs.listDir({ path: dir, depth: 1 });
    expect(listed.entries.find((e) => e.name === 'tagged.txt')?.metadata).toEqual({ author: 'mish' });
  });

  it('includes the entry in watch events when asked (envd 0.6.3), where the entry still exists', async () => {
    const watched = `${dir}/entries`;
    await mkdir(watched);
    const abort = new AbortController();
    const withEntry: Array<{ name: string; type: EventType; entry?: EntryInfo }> = [];
    const without: Array<{ name: string; type: EventType; entry?: EntryInfo }> = [];
    const readAll = (includeEntry: boolean, into: typeof withEntry) => {
      const iterator = agent.filesystemClient().watchDir({ path: watched, recursive: false, includeEntry }, { signal: abort.signal })[Symbol.asyncIterator]();
      return (async () => {
        expect(((await iterator.next()).value as WatchDirResponse).event.case).toBe('start');
        // Wrapped: an async function returning a promise would wait for it, i.e. for the end of the stream.
        const reading = (async () => {
          try {
            for (;;) {
              const next = await iterator.next();
              if (next.done) return;
              const event = next.value.event;
              if (event.case === 'filesystem') into.push({ name: event.value.name, type: event.value.type, entry: event.value.entry });
            }
          } catch {
            // Aborted at the end of the test.
          }
        })();
        return { reading };
      })();
    };
    const readers = (await Promise.all([readAll(true, withEntry), readAll(false, without)])).map((r) => r.reading);
    await writeFile(`${watched}/f.txt`, 'one');
    await new Promise((r) => setTimeout(r, 200));
    await appendFile(`${watched}/f.txt`, 'two');
    await new Promise((r) => setTimeout(r, 200));
    await unlink(`${watched}/f.txt`);
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline && !(withEntry.some((e) => e.type === EventType.REMOVE) && without.some((e) => e.type === EventType.REMOVE))) {
      await new Promise((r) => setTimeout(r, 50));
    }
    abort.abort();
    await Promise.all(readers);

    const created = withEntry.find((e) => e.type === EventType.CREATE);
    expect(created?.entry).toMatchObject({ name: 'f.txt', path: `${watched}/f.txt`, type: FileType.FILE });
    const written = withEntry.find((e) => e.type === EventType.WRITE);
    expect(written?.entry).toMatchObject({ name: 'f.txt', path: `${watched}/f.txt`, type: FileType.FILE });
    const removed = withEntry.find((e) => e.type === EventType.REMOVE);
    expect(removed).toBeDefined();
    expect(removed?.entry).toBeUndefined();
    expect(without.length).toBeGreaterThan(0);
    expect(without.every((e) => e.entry === undefined)).toBe(true);

    // The polling watcher carries entries too, in the order the changes happened.
    const fs = agent.filesystemClient();
    const { watcherId } = await fs.createWatcher({ path: watched, recursive: false, includeEntry: true });
    await writeFile(`${watched}/p.txt`, 'p');
    await unlink(`${watched}/p.txt`);
    let polled: Array<{ name: string; type: EventType; entry?: EntryInfo }> = [];
    const until = Date.now() + 3000;
    while (Date.now() < until && !polled.some((e) => e.type === EventType.REMOVE)) {
      await new Promise((r) => setTimeout(r, 50));
      polled = polled.concat((await fs.getWatcherEvents({ watcherId })).events);
    }
    await fs.removeWatcher({ watcherId });
    const types = polled.filter((e) => e.name === 'p.txt').map((e) => e.type);
    expect(types[0]).toBe(EventType.CREATE);
    expect(types.at(-1)).toBe(EventType.REMOVE);
    expect(polled.filter((e) => e.type === EventType.REMOVE).every((e) => e.entry === undefined)).toBe(true);
  });

  it('watches a local directory whether or not network mounts are allowed (envd 0.6.4)', async () => {
    const fs = agent.filesystemClient();
    for (const allowNetworkMounts of [false, true]) {
      const watched = `${dir}/local-${allowNetworkMounts}`;
      await mkdir(watched);
      const { watcherId } = await fs.createWatcher({ path: watched, recursive: false, allowNetworkMounts });
      await writeFile(`${watched}/n.txt`, 'n');
      let events: Array<{ name: string; type: EventType }> = [];
      const deadline = Date.now() + 3000;
      while (Date.now() < deadline && events.length === 0) {
        await new Promise((r) => setTimeout(r, 50));
        events = events.concat((await fs.getWatcherEvents({ watcherId })).events);
      }
      await fs.removeWatcher({ watcherId });
      expect(events.map((e) => [e.name, e.type])).toContainEqual(['n.txt', EventType.CREATE]);
    }
  });

  it('polling watchers collect events until removed', async () => {
    const fs = agent.filesystemClient();
    const watched = `${dir}/polled`;
    await mkdir(watched);
    const { watcherId } = await fs.createWatcher({ path: watched, recursive: false });
    await writeFile(`${watched}/n.txt`, 'n');
    let events: Array<{ name: string; type: EventType }> = [];
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline && events.length === 0) {
      await new Promise((r) => setTimeout(r, 50));
      events = events.concat((await fs.getWatcherEvents({ watcherId })).events);
    }
    expect(events.map((e) => [e.name, e.type])).toContainEqual(['n.txt', EventType.CREATE]);
    await fs.removeWatcher({ watcherId });
    expect(await codeOf(fs.getWatcherEvents({ watcherId }))).toBe(Code.NotFound);
    expect(await codeOf(fs.createWatcher({ path: `${dir}/missing` }))).toBe(Code.NotFound);
  });
});
