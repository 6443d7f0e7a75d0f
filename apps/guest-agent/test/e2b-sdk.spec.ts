import { randomBytes } from 'node:crypto';
import { chown, mkdir, rm, stat } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { CommandExitError, FilesystemEventType, FileType, NotFoundError, Sandbox, type FilesystemEvent } from 'e2b';
import { ENVD_COMPAT_VERSION } from '@kiln/contracts';
import { RunningAgent, scratchDirName } from './support/running-agent';

const TOKEN = 'sdk-test-token';

/**
 * The official e2b SDK aimed straight at the agent: a Sandbox object is constructed with `sandboxUrl` (the SDK's
 * own ConnectionConfig option, also settable as E2B_SANDBOX_URL), so no API server is involved and nothing in the
 * SDK is patched. envdVersion is what our platform advertises for the agent, so the SDK uses every feature it
 * would against a real sandbox (metadata, entry info in watch events, network-mount watches).
 */
function sdkSandbox(agent: RunningAgent, envdAccessToken?: string): Sandbox {
  const SandboxCtor = Sandbox as unknown as new (opts: Record<string, unknown>) => Sandbox;
  return new SandboxCtor({
    sandboxId: 'guest-agent-test',
    envdVersion: ENVD_COMPAT_VERSION,
    envdAccessToken,
    sandboxUrl: agent.url,
    requestTimeoutMs: 20_000,
  });
}

describe('official e2b SDK against the guest agent', () => {
  let agent: RunningAgent;
  let sandbox: Sandbox;
  let dir: string;

  beforeAll(async () => {
    agent = await RunningAgent.start();
    expect((await agent.init({ accessToken: TOKEN, timestamp: new Date().toISOString() })).status).toBe(204);
    sandbox = sdkSandbox(agent, TOKEN);
    dir = scratchDirName('sdk');
    await mkdir(dir, { recursive: true });
    const uid = Number(spawnSync('id', ['-u', 'user'], { encoding: 'utf8' }).stdout.trim());
    await chown(dir, uid, uid);
  });

  afterAll(async () => {
    await agent.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('commands.run: stdout, stderr and exit code as CommandExitError', async () => {
    const ok = await sandbox.commands.run('echo hello; echo err >&2');
    expect(ok).toMatchObject({ exitCode: 0, stdout: 'hello\n', stderr: 'err\n' });
    const failed = await sandbox.commands.run('echo hello; echo err >&2; exit 3').catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(CommandExitError);
    expect(failed).toMatchObject({ exitCode: 3, stdout: 'hello\n', stderr: 'err\n' });
  });

  it('runs as user by default and as root when asked', async () => {
    expect((await sandbox.commands.run('whoami')).stdout).toBe('user\n');
    expect((await sandbox.commands.run('whoami', { user: 'root' })).stdout).toBe('root\n');
  });

  it('background command: listed, connected, killed', async () => {
    const handle = await sandbox.commands.run('sleep 1000', { background: true });
    const listed = await sandbox.commands.list();
    expect(listed.map((p) => p.pid)).toContain(handle.pid);
    const again = await sandbox.commands.connect(handle.pid);
    expect(await sandbox.commands.kill(handle.pid)).toBe(true);
    const ended = await again.wait().catch((e: unknown) => e);
    expect(ended).toBeInstanceOf(CommandExitError);
    expect((ended as CommandExitError).error).toBe('signal: killed');
    expect(await sandbox.commands.kill(handle.pid)).toBe(false);
  });

  it('stdin: sendStdin then closeStdin ends cat', async () => {
    const handle = await sandbox.commands.run('cat', { background: true, stdin: true });
    await handle.sendStdin('piped through\n');
    await handle.closeStdin();
    const result = await handle.wait();
    expect(result.stdout).toBe('piped through\n');
  });

  it('pty: create, type, resize, stty size follows', async () => {
    let output = '';
    const decoder = new TextDecoder();
    const terminal = await sandbox.pty.create({ cols: 80, rows: 24, onData: (d) => void (output += decoder.decode(d)) });
    const until = async (re: RegExp) => {
      const deadline = Date.now() + 5000;
      while (!re.test(output)) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${re}: ${JSON.stringify(output.slice(-300))}`);
        await new Promise((r) => setTimeout(r, 30));
      }
    };
    await sandbox.pty.sendInput(terminal.pid, new TextEncoder().encode('stty size; echo ONE-$((1+1))\n'));
    await until(/ONE-2/);
    expect(output).toMatch(/24 80/);
    await sandbox.pty.resize(terminal.pid, { cols: 100, rows: 30 });
    await sandbox.pty.sendInput(terminal.pid, new TextEncoder().encode('stty size; echo TWO-$((2+2))\n'));
    await until(/TWO-4/);
    expect(output).toMatch(/30 100/);
    await sandbox.pty.kill(terminal.pid);
    await terminal.wait().catch(() => undefined);
  });

  it('files: binary write/read round trip, text, list, exists, rename, remove, getInfo', async () => {
    const bytes = randomBytes(100_000);
    const info = await sandbox.files.write(`${dir}/bin/data.bin`, bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) as ArrayBuffer);
    expect(info).toMatchObject({ name: 'data.bin', path: `${dir}/bin/data.bin` });
    const read = await sandbox.files.read(`${dir}/bin/data.bin`, { format: 'bytes' });
    expect(Buffer.compare(Buffer.from(read), bytes)).toBe(0);

    await sandbox.files.write(`${dir}/note.txt`, 'hello from the sdk');
    expect(await sandbox.files.read(`${dir}/note.txt`)).toBe('hello from the sdk');
    const entries = await sandbox.files.list(dir);
    expect(entries.map((e) => e.name).sort()).toEqual(['bin', 'note.txt']);
    const noteInfo = await sandbox.files.getInfo(`${dir}/note.txt`);
    expect(noteInfo).toMatchObject({ type: 'file', size: 18, permissions: '-rw-r--r--', owner: 'user' });
    expect(await sandbox.files.exists(`${dir}/note.txt`)).toBe(true);
    expect(await sandbox.files.makeDir(`${dir}/made`)).toBe(true);
    expect(await sandbox.files.makeDir(`${dir}/made`)).toBe(false);
    const renamed = await sandbox.files.rename(`${dir}/note.txt`, `${dir}/made/note.txt`);
    expect(renamed.path).toBe(`${dir}/made/note.txt`);
    await sandbox.files.remove(`${dir}/made`);
    expect(await sandbox.files.exists(`${dir}/made`)).toBe(false);
    await expect(sandbox.files.read(`${dir}/missing.txt`)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('files.write of several files at once (multipart)', async () => {
    const written = await sandbox.files.write([
      { path: `${dir}/multi/one.txt`, data: 'one' },
      { path: `${dir}/multi/two.txt`, data: 'two' },
    ]);
    expect(written.map((w) => w.path)).toEqual([`${dir}/multi/one.txt`, `${dir}/multi/two.txt`]);
    expect(await sandbox.files.read(`${dir}/multi/two.txt`)).toBe('two');
  });

  it('signed upload and download URLs work without the header', async () => {
    const uploadUrl = await sandbox.uploadUrl(`${dir}/signed.txt`, { useSignatureExpiration: 60 });
    const form = new FormData();
    form.append('file', new Blob(['signed content']), 'signed.txt');
    expect((await fetch(uploadUrl, { method: 'POST', body: form })).status).toBe(200);
    const downloadUrl = await sandbox.downloadUrl(`${dir}/signed.txt`);
    const res = await fetch(downloadUrl);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('signed content');
  });

  it('watchDir reports a file created, written and removed by a command', async () => {
    const watched = `${dir}/watched`;
    await sandbox.files.makeDir(watched);
    const events: FilesystemEvent[] = [];
    const handle = await sandbox.files.watchDir(watched, (e) => void events.push(e));
    await sandbox.commands.run(`echo a > ${watched}/w.txt; sleep 0.2; echo b >> ${watched}/w.txt; sleep 0.2; rm ${watched}/w.txt`);
    const deadline = Date.now() + 3000;
    while (!events.some((e) => e.type === FilesystemEventType.REMOVE) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    await handle.stop();
    const types = events.filter((e) => e.name === 'w.txt').map((e) => e.type);
    expect(types).toEqual(expect.arrayContaining([FilesystemEventType.CREATE, FilesystemEventType.WRITE, FilesystemEventType.REMOVE]));
  });

  it('commands.run returns as soon as the command exits, with a background child still running', async () => {
    const startedAt = Date.now();
    const result = await sandbox.commands.run('sleep 8 & echo started');
    expect(result).toMatchObject({ exitCode: 0, stdout: 'started\n', stderr: '' });
    expect(Date.now() - startedAt).toBeLessThan(2000);
    const server = await sandbox.commands.run(`cd ${dir} && nohup sleep 8 >/dev/null 2>&1 &`);
    expect(server.exitCode).toBe(0);
    // Both sleeps are the user's and end by themselves; this test leaves nothing else behind.
  });

  it('files.write as the user creates missing parents under / for the user (as the SDK\'s own write test does)', async () => {
    const top = `/kiln-ga-sdk-${process.pid}-${Date.now()}`;
    try {
      const info = await sandbox.files.write(`${top}/multi_test_file0.txt`, 'zero');
      expect(info).toMatchObject({ path: `${top}/multi_test_file0.txt`, type: 'file' });
      expect(await sandbox.files.read(`${top}/multi_test_file0.txt`)).toBe('zero');
      const uid = Number(spawnSync('id', ['-u', 'user'], { encoding: 'utf8' }).stdout.trim());
      expect((await stat(top)).uid).toBe(uid);
      expect((await sandbox.files.getInfo(top)).owner).toBe('user');
    } finally {
      await rm(top, { recursive: true, force: true });
    }
  });

  it('file metadata: written (multipart and octet-stream), read back, listed, kept by rename, cleared by an overwrite', async () => {
    const metadata = { author: 'mish', purpose: 'upload' };
    const multipart = await sandbox.files.write(`${dir}/meta/a.txt`, 'a', { metadata });
    expect(multipart.metadata).toEqual(metadata);
    const octet = await sandbox.files.write(`${dir}/meta/b.txt`, 'b', { metadata, useOctetStream: true });
    expect(octet.metadata).toEqual(metadata);
    expect((await sandbox.files.getInfo(`${dir}/meta/b.txt`)).metadata).toEqual(metadata);
    const many = await sandbox.files.writeFiles(
      [
        { path: `${dir}/meta/m1.txt`, data: '1' },
        { path: `${dir}/meta/m2.txt`, data: '2' },
      ],
      { metadata: { source: 'test-suite' } },
    );
    expect(many.map((w) => w.metadata)).toEqual([{ source: 'test-suite' }, { source: 'test-suite' }]);
    const listed = await sandbox.files.list(`${dir}/meta`);
    expect(listed.find((e) => e.name === 'a.txt')?.metadata).toEqual(metadata);
    expect((await sandbox.files.rename(`${dir}/meta/a.txt`, `${dir}/meta/renamed.txt`)).metadata).toEqual(metadata);

    const plain = await sandbox.files.write(`${dir}/meta/b.txt`, 'second');
    expect(plain.metadata).toBeUndefined();
    expect((await sandbox.files.getInfo(`${dir}/meta/b.txt`)).metadata).toBeUndefined();

    // Set inside the sandbox, out of band: surfaces with the namespace stripped.
    await sandbox.files.write(`${dir}/meta/x.txt`, 'x');
    await sandbox.commands.run(`python3 -c "import os; os.setxattr('${dir}/meta/x.txt', 'user.e2b.author', b'mish')"`);
    expect((await sandbox.files.getInfo(`${dir}/meta/x.txt`)).metadata).toEqual({ author: 'mish' });
  });

  it('watchDir with includeEntry carries the entry; allowNetworkMounts still watches a local directory', async () => {
    const watched = `${dir}/watched-entry`;
    await sandbox.files.makeDir(watched);
    await sandbox.files.write(`${watched}/w.txt`, 'first');
    const seen = (opts: { includeEntry?: boolean; allowNetworkMounts?: boolean }) =>
      new Promise<{ event: FilesystemEvent; stop: () => Promise<void> }>((resolve, reject) => {
        let stop: () => Promise<void> = async () => undefined;
        sandbox.files
          .watchDir(watched, (event) => {
            if (event.type === FilesystemEventType.WRITE && event.name === 'w.txt') resolve({ event, stop });
          }, opts)
          .then(async (handle) => {
            stop = () => handle.stop();
            await sandbox.files.write(`${watched}/w.txt`, 'second');
          })
          .catch(reject);
      });
    const withEntry = await seen({ includeEntry: true });
    await withEntry.stop();
    expect(withEntry.event.entry).toMatchObject({ name: 'w.txt', path: `${watched}/w.txt`, type: FileType.FILE });
    const networkAllowed = await seen({ allowNetworkMounts: true });
    await networkAllowed.stop();
    expect(networkAllowed.event.entry).toBeUndefined();
  });

  it('a wrong access token surfaces as an authentication error', async () => {
    const intruder = sdkSandbox(agent, 'not-the-token');
    await expect(intruder.commands.run('true')).rejects.toThrow(/unauthenticated|401|access token/i);
    await expect(intruder.files.read('/etc/hostname')).rejects.toThrow();
  });
});
