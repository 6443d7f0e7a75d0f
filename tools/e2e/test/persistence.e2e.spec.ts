import { Sandbox } from 'e2b';
import { StackInfo, readStack } from '../harness/stack-harness';

/**
 * Issue 13's acceptance, through the official e2b SDK against the real stack (real VMs): pause/resume with memory
 * over five cycles, pause on timeout with auto-resume by traffic, fork, and named snapshots.
 */
describe('pause, resume, fork and snapshots through the official SDK (real stack, real VMs)', () => {
  let stack: StackInfo;
  let opts: { apiKey: string; apiUrl: string; sandboxUrl: string; domain: string };
  const made: Sandbox[] = [];

  beforeAll(() => {
    stack = readStack();
    opts = { apiKey: stack.apiKey, apiUrl: stack.apiUrl, sandboxUrl: stack.sandboxUrl, domain: stack.domain };
  });

  afterAll(async () => {
    for (const sandbox of made) await sandbox.kill().catch(() => undefined);
  });

  const create = async (template = 'base', extra: Record<string, unknown> = {}) => {
    const sandbox = await Sandbox.create(template, { ...opts, timeoutMs: 300_000, ...extra });
    made.push(sandbox);
    return sandbox;
  };

  /** A web server on port 8000 and a counter that only lives in the memory of its process (dumped on SIGUSR1). */
  async function startWorkload(sandbox: Sandbox, page: string): Promise<void> {
    await sandbox.files.write('/home/user/www/index.html', page);
    await sandbox.commands.run('cd /home/user/www && python3 -m http.server 8000', { background: true });
    await sandbox.files.write(
      '/home/user/counter.py',
      ['import signal, time', 'n = 0', 'def dump(*_):', '    open("/tmp/counter", "w").write(str(n))', 'signal.signal(signal.SIGUSR1, dump)', 'while True:', '    n += 1', '    time.sleep(0.01)'].join('\n'),
    );
    const counter = await sandbox.commands.run('python3 /home/user/counter.py', { background: true });
    await sandbox.files.write('/home/user/counter.pid', String(counter.pid));
    await sandbox.commands.run('for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null && exit 0; sleep 0.1; done; exit 1');
  }

  const readCounter = async (sandbox: Sandbox): Promise<number> =>
    Number((await sandbox.commands.run('rm -f /tmp/counter; kill -USR1 $(cat /home/user/counter.pid); for i in $(seq 100); do [ -s /tmp/counter ] && break; sleep 0.05; done; cat /tmp/counter')).stdout);

  /** GET / of the sandbox's port 8000 through the traffic listener (E2B's headers), as any HTTP client reaches it. */
  const viaTrafficListener = (sandboxId: string) =>
    fetch(`${stack.sandboxUrl}/`, { headers: { 'E2b-Sandbox-Id': sandboxId, 'E2b-Sandbox-Port': '8000' }, signal: AbortSignal.timeout(120_000) });

  const stateOf = async (sandboxId: string) => (await Sandbox.getInfo(sandboxId, opts)).state;

  it('five pause/resume cycles: every earlier file is there, the in-memory counter goes on, the server answers through the traffic listener', async () => {
    const sandbox = await create();
    await startWorkload(sandbox, 'cycling\n');
    let last = await readCounter(sandbox);
    for (let cycle = 1; cycle <= 5; cycle++) {
      await sandbox.files.write(`/home/user/cycle-${cycle}.txt`, `cycle ${cycle}`);
      expect(await sandbox.pause()).toBe(true);
      expect(await stateOf(sandbox.sandboxId)).toBe('paused');
      const paused = await Sandbox.list({ ...opts, query: { state: ['paused'] } }).nextItems();
      expect(paused.map((s) => s.sandboxId)).toContain(sandbox.sandboxId);
      // A second pause of a paused sandbox: the SDK reports it was already paused.
      expect(await Sandbox.pause(sandbox.sandboxId, opts)).toBe(false);

      const resumed = await Sandbox.connect(sandbox.sandboxId, { ...opts, timeoutMs: 300_000 });
      expect(await stateOf(sandbox.sandboxId)).toBe('running');
      for (let earlier = 1; earlier <= cycle; earlier++) expect(await resumed.files.read(`/home/user/cycle-${earlier}.txt`)).toBe(`cycle ${earlier}`);
      const count = await readCounter(resumed);
      // The same process kept counting from where it stopped: never back to zero, never lost.
      expect(count).toBeGreaterThan(last);
      last = count;
      const response = await viaTrafficListener(sandbox.sandboxId);
      expect(response.status).toBe(200);
      expect(await response.text()).toBe('cycling\n');
    }
  });

  it('onTimeout pause with autoResume: the sandbox is paused at its timeout, not killed, and a request to its port resumes it and gets the page', async () => {
    const sandbox = await create('base', { timeoutMs: 4_000, lifecycle: { onTimeout: 'pause', autoResume: true } });
    const info = await Sandbox.getInfo(sandbox.sandboxId, opts);
    expect(info.lifecycle).toEqual({ onTimeout: 'pause', autoResume: true });
    // Only the server: under TCG the 4 s timeout leaves time for little else before the sandbox pauses.
    await sandbox.files.write('/home/user/www/index.html', 'woken up\n');
    await sandbox.commands.run('cd /home/user/www && python3 -m http.server 8000', { background: true });
    let state = await stateOf(sandbox.sandboxId);
    for (let i = 0; i < 120 && state !== 'paused'; i++) {
      await new Promise((r) => setTimeout(r, 500));
      state = await stateOf(sandbox.sandboxId);
    }
    expect(state).toBe('paused');

    // The request that finds it paused resumes it and is served. (Had the pause come before the server listened,
    // the guest would refuse the port once resumed: retried, each retry through the listener again.)
    let response = await viaTrafficListener(sandbox.sandboxId);
    for (let i = 0; i < 20 && response.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 250));
      response = await viaTrafficListener(sandbox.sandboxId);
    }
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('woken up\n');
    // Served by a resumed sandbox, which a 4 s timeout pauses again soon: running or paused, never gone.
    expect(['running', 'paused']).toContain(await stateOf(sandbox.sandboxId));
    // Its lifecycle log shows the pause at the timeout and the resume the request caused (no kill in between).
    const logs = (await (await fetch(`${stack.apiUrl}/sandboxes/${sandbox.sandboxId}/logs`, { headers: { 'X-API-Key': stack.apiKey } })).json()) as { logs: Array<{ line: string }> };
    const lines = logs.logs.map((l) => l.line);
    expect(lines.some((line) => line.startsWith('pausing -> paused'))).toBe(true);
    expect(lines.some((line) => line.startsWith('paused -> resuming'))).toBe(true);
    expect(lines.some((line) => line.includes('killed'))).toBe(false);
  });

  it('fork of three: each fork has the files and the running process; a write in one is seen by no other; the source keeps its id and runs on', async () => {
    const source = await create();
    await startWorkload(source, 'forked\n');
    await source.files.write('/home/user/shared.txt', 'from the source');
    const before = await readCounter(source);

    const forks = await source.fork({ count: 3, timeoutMs: 300_000 });
    expect(forks).toHaveLength(3);
    for (const fork of forks) {
      expect(fork).toBeInstanceOf(Sandbox);
      made.push(fork as Sandbox);
    }
    const sandboxes = forks as Sandbox[];
    expect(new Set(sandboxes.map((f) => f.sandboxId)).size).toBe(3);
    expect(sandboxes.map((f) => f.sandboxId)).not.toContain(source.sandboxId);
    expect(await stateOf(source.sandboxId)).toBe('running');
    for (const fork of sandboxes) {
      expect(await fork.files.read('/home/user/shared.txt')).toBe('from the source');
      expect(await readCounter(fork)).toBeGreaterThanOrEqual(before);
      const response = await viaTrafficListener(fork.sandboxId);
      expect(await response.text()).toBe('forked\n');
    }
    await sandboxes[0].files.write('/home/user/mine.txt', 'fork 0 only');
    expect(await sandboxes[0].files.exists('/home/user/mine.txt')).toBe(true);
    for (const other of [source, sandboxes[1], sandboxes[2]]) expect(await other.files.exists('/home/user/mine.txt')).toBe(false);
    expect(await readCounter(source)).toBeGreaterThan(before);
  });

  it('a named snapshot survives the kill of its source; a sandbox created from it has the state; list and delete work', async () => {
    const source = await create();
    await source.files.write('/home/user/snapshot.txt', 'captured');
    const snapshot = await source.createSnapshot();
    expect(snapshot.snapshotId).toBeTruthy();
    await source.kill();

    const listed: string[] = [];
    const paginator = Sandbox.listSnapshots(opts);
    while (paginator.hasNext) listed.push(...(await paginator.nextItems()).map((s) => s.snapshotId));
    expect(listed).toContain(snapshot.snapshotId);

    const restored = await create(snapshot.snapshotId);
    expect(await restored.files.read('/home/user/snapshot.txt')).toBe('captured');
    await restored.kill();

    expect(await Sandbox.deleteSnapshot(snapshot.snapshotId, opts)).toBe(true);
    const after: string[] = [];
    const again = Sandbox.listSnapshots(opts);
    while (again.hasNext) after.push(...(await again.nextItems()).map((s) => s.snapshotId));
    expect(after).not.toContain(snapshot.snapshotId);
  });
});
