import { request } from 'node:http';
import { release } from 'node:os';
import { CommandExitError, NotFoundError, Sandbox } from 'e2b';
import { StackInfo, readStack } from '../harness/stack-harness';

/**
 * The bar of issue 5: the official e2b SDK, unchanged, against a Kiln stack with
 * real VMs. Only connection settings are passed (what E2B_API_URL/E2B_SANDBOX_URL/E2B_API_KEY set).
 */
describe('official e2b SDK against Kiln (real stack, real VMs)', () => {
  let stack: StackInfo;
  let opts: { apiKey: string; apiUrl: string; sandboxUrl: string; domain: string };
  let sandbox: Sandbox;

  beforeAll(async () => {
    stack = readStack();
    opts = { apiKey: stack.apiKey, apiUrl: stack.apiUrl, sandboxUrl: stack.sandboxUrl, domain: stack.domain };
    sandbox = await Sandbox.create('base', { ...opts, metadata: { suite: 'sdk', run: String(process.pid) }, timeoutMs: 120_000 });
  });

  afterAll(async () => {
    await sandbox?.kill().catch(() => undefined);
  });

  it('runs a command and returns its stdout', async () => {
    const result = await sandbox.commands.run('echo hi');
    expect(result.stdout).toBe('hi\n');
    expect(result.exitCode).toBe(0);
  });

  it('raises CommandExitError with the exit code of a failing command', async () => {
    const failure = sandbox.commands.run('echo oops >&2; exit 7');
    await expect(failure).rejects.toBeInstanceOf(CommandExitError);
    await expect(failure).rejects.toMatchObject({ exitCode: 7, stderr: 'oops\n' });
  });

  it('runs inside the guest, not on the host', async () => {
    const { stdout } = await sandbox.commands.run('uname -r; id -un');
    const [kernel, user] = stdout.trim().split('\n');
    expect(kernel).toMatch(/-cloud-amd64$/);
    expect(kernel).not.toBe(release());
    expect(user).toBe('user');
  });

  it('kills a background command', async () => {
    const handle = await sandbox.commands.run('sleep 1000', { background: true });
    const listed = await sandbox.commands.list();
    expect(listed.map((p) => p.pid)).toContain(handle.pid);
    expect(await sandbox.commands.kill(handle.pid)).toBe(true);
    const ended = await handle.wait().catch((error: unknown) => error);
    expect(ended).toBeInstanceOf(CommandExitError);
    expect((await sandbox.commands.list()).map((p) => p.pid)).not.toContain(handle.pid);
  });

  it('writes, reads and lists files', async () => {
    const bytes = Buffer.from([0, 1, 2, 250, 255, 10, 13]);
    await sandbox.files.write('/home/user/data/blob.bin', bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    await sandbox.files.write('/home/user/data/note.txt', 'hello kiln');
    expect(await sandbox.files.read('/home/user/data/note.txt')).toBe('hello kiln');
    const read = await sandbox.files.read('/home/user/data/blob.bin', { format: 'bytes' });
    expect(Buffer.from(read)).toEqual(bytes);
    const entries = await sandbox.files.list('/home/user/data');
    expect(entries.map((e) => e.name).sort()).toEqual(['blob.bin', 'note.txt']);
  });

  it('ends a command when its own process exits, not when a background child it started lets go of the output', async () => {
    // Control: the same background sleep still runs after the command returned, so the command did not wait for it.
    const startedAt = Date.now();
    const result = await sandbox.commands.run('sleep 8 & echo started');
    const elapsedMs = Date.now() - startedAt;
    expect(result.stdout).toBe('started\n');
    expect(result.exitCode).toBe(0);
    // Well under a second on KVM; under TCG a round trip through gateway, host proxy and guest is ~100-300 ms.
    expect(elapsedMs).toBeLessThan(1000);
    const sleeping = await sandbox.commands.run('pgrep -x sleep || true');
    expect(sleeping.stdout.trim()).not.toBe('');
    const nohup = Date.now();
    await sandbox.commands.run('cd /tmp && nohup sleep 8 >/dev/null 2>&1 &');
    expect(Date.now() - nohup).toBeLessThan(1000);
  });

  it("creates a user's missing parent directories on write, owned by the user", async () => {
    await sandbox.files.write('/kiln-e2e-parent/deeper/x.txt', 'made by user');
    const { stdout } = await sandbox.commands.run(
      'stat -c %U /kiln-e2e-parent /kiln-e2e-parent/deeper /kiln-e2e-parent/deeper/x.txt; cat /kiln-e2e-parent/deeper/x.txt',
    );
    expect(stdout).toBe('user\nuser\nuser\nmade by user');
    // Control: the parent of the created directory is root's and stays so.
    expect((await sandbox.commands.run('stat -c %U /')).stdout).toBe('root\n');
  });

  it('runs a PTY session', async () => {
    let output = '';
    const pty = await sandbox.pty.create({ cols: 80, rows: 24, onData: (data) => {
        output += Buffer.from(data).toString();
      },
    });
    await sandbox.pty.sendInput(pty.pid, new TextEncoder().encode('tty; stty size; exit\n'));
    await pty.wait().catch(() => undefined);
    expect(output).toMatch(/\/dev\/pts\/\d+/);
    expect(output).toContain('24 80');
  });

  it('sets the timeout and lists the sandbox with its metadata', async () => {
    await sandbox.setTimeout(240_000);
    const info = await sandbox.getInfo();
    expect(new Date(info.endAt).getTime()).toBeGreaterThan(Date.now() + 200_000);
    const paginator = Sandbox.list({ ...opts, query: { metadata: { suite: 'sdk', run: String(process.pid) } } });
    const listed = await paginator.nextItems();
    expect(listed.map((s) => s.sandboxId)).toContain(sandbox.sandboxId);
    expect(listed.find((s) => s.sandboxId === sandbox.sandboxId)?.metadata).toMatchObject({ suite: 'sdk' });
  });

  it('connects to an existing sandbox by id', async () => {
    const again = await Sandbox.connect(sandbox.sandboxId, opts);
    expect((await again.commands.run('cat /home/user/data/note.txt')).stdout).toBe('hello kiln');
  });

  it('reaches an HTTP server inside the sandbox through the gateway, by headers and by host name', async () => {
    await sandbox.commands.run('mkdir -p /tmp/www && echo served-from-guest > /tmp/www/index.txt');
    await sandbox.commands.run('cd /tmp/www && python3 -m http.server 8000', { background: true });
    const viaHeaders = async () =>
      fetch(`${stack.sandboxUrl}/index.txt`, { headers: { 'E2b-Sandbox-Id': sandbox.sandboxId, 'E2b-Sandbox-Port': '8000' } });
    let response = await viaHeaders();
    for (let i = 0; i < 50 && response.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 200));
      response = await viaHeaders();
    }
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('served-from-guest\n');

    const host = sandbox.getHost(8000);
    expect(host).toBe(`8000-${sandbox.sandboxId}.${stack.domain}`);
    const port = Number(new URL(stack.sandboxUrl).port);
    const body = await new Promise<string>((resolve, reject) => {
      request({ host: '127.0.0.1', port, path: '/index.txt', headers: { host } }, (res) => {
        let text = '';
        res.on('data', (chunk) => (text += chunk));
        res.on('end', () => resolve(`${res.statusCode} ${text}`));
      })
        .on('error', reject)
        .end();
    });
    expect(body).toBe('200 served-from-guest\n');
  });

  it('kills the sandbox; later calls raise the SDK’s not-found error', async () => {
    const victim = await Sandbox.create('base', { ...opts, timeoutMs: 60_000 });
    await victim.kill();
    await expect(victim.setTimeout(30_000)).rejects.toBeInstanceOf(NotFoundError);
    await expect(Sandbox.connect(victim.sandboxId, opts)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('expires a sandbox after its timeout; a refresh extends it first', async () => {
    const short = await Sandbox.create('base', { ...opts, timeoutMs: 3_000 });
    const refreshed = await Sandbox.create('base', { ...opts, timeoutMs: 3_000 });
    await refreshed.setTimeout(60_000);
    await new Promise((r) => setTimeout(r, 6_000));
    const ids = (await Sandbox.list(opts).nextItems()).map((s) => s.sandboxId);
    expect(ids).not.toContain(short.sandboxId);
    expect(ids).toContain(refreshed.sandboxId);
    expect(await refreshed.isRunning()).toBe(true);
    await refreshed.kill();
  });

  it('answers 404 for another team’s sandbox and 401 for a wrong key', async () => {
    await expect(Sandbox.connect(sandbox.sandboxId, { ...opts, apiKey: stack.otherTeamApiKey })).rejects.toBeInstanceOf(NotFoundError);
    const wrong = await fetch(`${stack.apiUrl}/sandboxes`, { headers: { 'X-API-Key': 'e2b_0000000000000000000000000000000000000000' } });
    expect(wrong.status).toBe(401);
    expect(await wrong.json()).toMatchObject({ code: 401, message: expect.any(String) });
  });

  it('handles two concurrent kills of one sandbox cleanly', async () => {
    const target = await Sandbox.create('base', { ...opts, timeoutMs: 60_000 });
    const results = await Promise.all([Sandbox.kill(target.sandboxId, opts), Sandbox.kill(target.sandboxId, opts)]);
    expect(results.filter(Boolean)).toHaveLength(1);
    const { Client } = await import('pg');
    const db = new Client({ connectionString: stack.databaseUrl });
    await db.connect();
    try {
      const { rows } = await db.query('select state from sandboxes where id = $1', [target.sandboxId]);
      expect(rows).toEqual([{ state: 'killed' }]);
      const errors = await db.query("select 1 from sandbox_events where sandbox_id = $1 and to_state = 'error'", [target.sandboxId]);
      expect(errors.rowCount).toBe(0);
    } finally {
      await db.end();
    }
    const detail = await fetch(`${stack.apiUrl}/sandboxes/${target.sandboxId}`, { headers: { 'X-API-Key': stack.apiKey } });
    expect(detail.status).toBe(404);
  });
});
