import { createHash, randomBytes } from 'node:crypto';
import { request } from 'node:http';
import { connect } from 'node:http2';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, stat, writeFile, chown } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { spawnSync } from 'node:child_process';
import { RunningAgent, scratchDirName } from './support/running-agent';

const MiB = 1024 * 1024;

/** `count` MiB of incompressible data, each MiB stamped with its index so reordering would change the hash. */
function generated(count: number): { stream: Readable; digest: () => string } {
  const base = randomBytes(MiB);
  const hash = createHash('sha256');
  let i = 0;
  const stream = new Readable({
    read() {
      if (i === count) return void this.push(null);
      const chunk = Buffer.from(base);
      chunk.writeUInt32BE(i++, 0);
      hash.update(chunk);
      this.push(chunk);
    },
  });
  return { stream, digest: () => hash.digest('hex') };
}

function upload(
  agent: RunningAgent,
  query: string,
  body: Readable,
  headers: Record<string, string | string[]>,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${agent.url}/files?${query}`, { method: 'POST', headers }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(parts).toString() }));
    });
    req.on('error', reject);
    body.pipe(req);
  });
}

function downloadDigest(agent: RunningAgent, query: string): Promise<{ status: number; digest: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    request(`${agent.url}/files?${query}`, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (d: Buffer) => {
        bytes += d.length;
        hash.update(d);
      });
      res.on('end', () => resolve({ status: res.statusCode!, digest: hash.digest('hex'), bytes }));
      res.on('error', reject);
    })
      .on('error', reject)
      .end();
  });
}

describe('HTTP /files, /metrics, /envs, /init', () => {
  let agent: RunningAgent;
  let dir: string;
  const userIds = () => {
    const uid = Number(spawnSync('id', ['-u', 'user'], { encoding: 'utf8' }).stdout.trim());
    const gid = Number(spawnSync('id', ['-g', 'user'], { encoding: 'utf8' }).stdout.trim());
    return { uid, gid };
  };

  beforeAll(async () => {
    agent = await RunningAgent.start();
    dir = scratchDirName('http');
    await mkdir(dir, { recursive: true });
    const { uid, gid } = userIds();
    await chown(dir, uid, gid);
  });

  afterAll(async () => {
    await agent.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('round-trips a binary file byte for byte, owned by the user, creating parent directories', async () => {
    const content = randomBytes(300_000);
    content[0] = 0;
    content[1] = 0xff;
    const path = `${dir}/nested/deeper/blob.bin`;
    const up = await upload(agent, `path=${encodeURIComponent(path)}`, Readable.from([content]), {
      'content-type': 'application/octet-stream',
    });
    expect(up.status).toBe(200);
    expect(JSON.parse(up.body)).toEqual([{ path, name: 'blob.bin', type: 'file' }]);
    const { uid, gid } = userIds();
    const info = await stat(path);
    expect([info.uid, info.gid]).toEqual([uid, gid]);
    expect((await stat(`${dir}/nested/deeper`)).uid).toBe(uid);
    expect(Buffer.compare(await readFile(path), content)).toBe(0);

    const res = await fetch(`${agent.url}/files?path=${encodeURIComponent(path)}`);
    expect(res.status).toBe(200);
    expect(Buffer.compare(Buffer.from(await res.arrayBuffer()), content)).toBe(0);
  });

  it('transfers files over cleartext HTTP/2 on the same port', async () => {
    const session = connect(agent.url);
    try {
      const content = randomBytes(1_500_000);
      const path = `${dir}/h2/blob.bin`;
      const h2 = (headers: Record<string, string>, body?: Buffer) =>
        new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
          const stream = session.request(headers);
          const parts: Buffer[] = [];
          let status = 0;
          stream.on('response', (h) => (status = Number(h[':status'])));
          stream.on('data', (d: Buffer) => parts.push(d));
          stream.on('end', () => resolve({ status, body: Buffer.concat(parts) }));
          stream.on('error', reject);
          stream.end(body);
        });
      const query = `/files?path=${encodeURIComponent(path)}`;
      const up = await h2({ ':method': 'POST', ':path': query, 'content-type': 'application/octet-stream' }, content);
      expect(up.status).toBe(200);
      const down = await h2({ ':method': 'GET', ':path': query });
      expect(down.status).toBe(200);
      expect(Buffer.compare(down.body, content)).toBe(0);
    } finally {
      session.close();
    }
  });

  it('accepts multipart uploads of several files named by their part filenames', async () => {
    const form = new FormData();
    form.append('file', new Blob([Buffer.from('alpha')]), `${dir}/multi/a.txt`);
    form.append('file', new Blob([Buffer.from([0, 1, 2, 3])]), `${dir}/multi/b.bin`);
    const res = await fetch(`${agent.url}/files`, { method: 'POST', body: form });
    expect(res.status).toBe(200);
    expect(((await res.json()) as Array<{ path: string }>).map((e) => e.path)).toEqual([`${dir}/multi/a.txt`, `${dir}/multi/b.bin`]);
    expect(await readFile(`${dir}/multi/a.txt`, 'utf8')).toBe('alpha');
    expect([...(await readFile(`${dir}/multi/b.bin`))]).toEqual([0, 1, 2, 3]);
  });

  it('writes a multipart `file` part without a filename (a form field) to the path query parameter, byte for byte', async () => {
    // What `form.append('file', 'text')` sends, as the SDK's signed-URL test does; envd writes it like any file part.
    const asText = new FormData();
    asText.append('file', 'file content');
    const text = await fetch(`${agent.url}/files?path=${encodeURIComponent(`${dir}/field/text.txt`)}`, { method: 'POST', body: asText });
    expect(text.status).toBe(200);
    expect(await text.json()).toEqual([{ path: `${dir}/field/text.txt`, name: 'text.txt', type: 'file' }]);
    expect(await readFile(`${dir}/field/text.txt`, 'utf8')).toBe('file content');

    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const boundary = 'kilnboundary';
    const body = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"\r\n\r\n`),
      bytes,
      Buffer.from(`\r\n--${boundary}--\r\n`),
    ]);
    const raw = await upload(agent, `path=${encodeURIComponent(`${dir}/field/bytes.bin`)}`, Readable.from([body]), {
      'content-type': `multipart/form-data; boundary=${boundary}`,
    });
    expect(raw.status).toBe(200);
    expect(Buffer.compare(await readFile(`${dir}/field/bytes.bin`), bytes)).toBe(0);

    const noPath = new FormData();
    noPath.append('file', 'nowhere to go');
    const refused = await fetch(`${agent.url}/files`, { method: 'POST', body: noPath });
    expect(refused.status).toBe(400);
  });

  it('creates missing parents for the user where the user could not have (as envd, root creates and hands them over)', async () => {
    const { uid, gid } = userIds();
    // `/` belongs to root: the default user could not make a directory there itself.
    const top = `/kiln-ga-parents-${process.pid}-${Date.now()}`;
    const otherTop = `${top}-multi`;
    try {
      const path = `${top}/new/x.txt`;
      const up = await upload(agent, `path=${encodeURIComponent(path)}`, Readable.from([Buffer.from('x')]), {
        'content-type': 'application/octet-stream',
      });
      expect(up.status).toBe(200);
      for (const created of [top, `${top}/new`, path]) {
        const info = await stat(created);
        expect([created, info.uid, info.gid]).toEqual([created, uid, gid]);
      }
      expect((await stat(`${top}/new`)).mode & 0o777).toBe(0o755);
      expect(await readFile(path, 'utf8')).toBe('x');

      const form = new FormData();
      form.append('file', new Blob(['a']), `${otherTop}/one/a.txt`);
      form.append('file', new Blob(['b']), `${otherTop}/two/b.txt`);
      const multi = await fetch(`${agent.url}/files`, { method: 'POST', body: form });
      expect(multi.status).toBe(200);
      for (const created of [otherTop, `${otherTop}/one`, `${otherTop}/two`, `${otherTop}/one/a.txt`, `${otherTop}/two/b.txt`]) {
        expect((await stat(created)).uid).toBe(uid);
      }
      // Only missing parents are the user's to create: a file directly in an existing root-owned directory is not.
      const intoEtc = await upload(agent, `path=${encodeURIComponent(`/etc/kiln-ga-${process.pid}.txt`)}`, Readable.from([Buffer.from('x')]), {
        'content-type': 'application/octet-stream',
      });
      expect(intoEtc.status).toBe(403);
    } finally {
      await rm(top, { recursive: true, force: true });
      await rm(otherTop, { recursive: true, force: true });
    }
  });

  describe('file metadata (X-Metadata-* headers, stored as user.e2b.* extended attributes)', () => {
    const xattrsOf = (path: string): Record<string, string> => {
      const run = spawnSync(
        'python3',
        ['-c', 'import os, sys, json; p = sys.argv[1]; print(json.dumps({n: os.getxattr(p, n).decode() for n in os.listxattr(p)}))', path],
        { encoding: 'utf8' },
      );
      if (run.status !== 0) throw new Error(run.stderr);
      return JSON.parse(run.stdout) as Record<string, string>;
    };
    const put = (path: string, content: string, headers: Record<string, string | string[]> = {}) =>
      upload(agent, `path=${encodeURIComponent(path)}`, Readable.from([Buffer.from(content)]), {
        'content-type': 'application/octet-stream',
        ...headers,
      });

    it('stores the headers on the file, answers with them, and Stat and ListDir show them', async () => {
      const path = `${dir}/meta/with.txt`;
      const up = await put(path, 'content', { 'X-Metadata-Author': 'mish', 'x-metadata-purpose': 'upload' });
      expect(up.status).toBe(200);
      expect(JSON.parse(up.body)).toEqual([{ path, name: 'with.txt', type: 'file', metadata: { author: 'mish', purpose: 'upload' } }]);
      expect(xattrsOf(path)).toEqual({ 'user.e2b.author': 'mish', 'user.e2b.purpose': 'upload' });
      const fs = agent.filesystemClient();
      expect((await fs.stat({ path })).entry?.metadata).toEqual({ author: 'mish', purpose: 'upload' });
      const listed = await fs.listDir({ path: `${dir}/meta`, depth: 1 });
      expect(listed.entries.find((e) => e.name === 'with.txt')?.metadata).toEqual({ author: 'mish', purpose: 'upload' });
      // A file without metadata has none in the answer at all, as envd.
      const plain = await put(`${dir}/meta/plain.txt`, 'p');
      expect(JSON.parse(plain.body)).toEqual([{ path: `${dir}/meta/plain.txt`, name: 'plain.txt', type: 'file' }]);
      expect((await fs.stat({ path: `${dir}/meta/plain.txt` })).entry?.metadata).toEqual({});
    });

    it('an overwrite replaces the whole set: keys it does not send are removed, none at all clears it; other user.* attributes stay', async () => {
      const path = `${dir}/meta/overwrite.txt`;
      expect((await put(path, 'first', { 'X-Metadata-Author': 'mish', 'X-Metadata-Stage': 'one' })).status).toBe(200);
      const setOther = spawnSync('python3', ['-c', `import os; os.setxattr(${JSON.stringify(path)}, 'user.other', b'tool')`]);
      expect(setOther.status).toBe(0);
      const second = await put(path, 'second', { 'X-Metadata-Stage': 'two' });
      expect(JSON.parse(second.body)[0].metadata).toEqual({ stage: 'two' });
      expect(xattrsOf(path)).toEqual({ 'user.e2b.stage': 'two', 'user.other': 'tool' });
      const third = await put(path, 'third');
      expect(JSON.parse(third.body)[0].metadata).toBeUndefined();
      expect(xattrsOf(path)).toEqual({ 'user.other': 'tool' });
      expect(await readFile(path, 'utf8')).toBe('third');
    });

    it('applies the same metadata to every file of a multipart upload, and the first of a repeated header wins', async () => {
      const form = new FormData();
      form.append('file', new Blob(['1']), `${dir}/meta/multi/one.txt`);
      form.append('file', new Blob(['2']), `${dir}/meta/multi/two.txt`);
      const res = await fetch(`${agent.url}/files`, { method: 'POST', body: form, headers: { 'X-Metadata-Source': 'test-suite' } });
      expect(res.status).toBe(200);
      const entries = (await res.json()) as Array<{ metadata?: Record<string, string> }>;
      expect(entries.map((e) => e.metadata)).toEqual([{ source: 'test-suite' }, { source: 'test-suite' }]);
      expect(xattrsOf(`${dir}/meta/multi/two.txt`)).toEqual({ 'user.e2b.source': 'test-suite' });

      const repeated = await put(`${dir}/meta/repeated.txt`, 'r', { 'X-Metadata-K': ['first', 'second'] });
      expect(JSON.parse(repeated.body)[0].metadata).toEqual({ k: 'first' });
    });

    it('refuses invalid metadata with 400 before creating the file', async () => {
      const cases: Array<Record<string, string>> = [
        { 'X-Metadata-Good': 'caf\u00e9' },
        { [`X-Metadata-${'k'.repeat(247)}`]: 'v' },
        { 'X-Metadata-A': 'v'.repeat(2100), 'X-Metadata-B': 'v'.repeat(2100) },
      ];
      for (const [i, headers] of cases.entries()) {
        const path = `${dir}/meta/invalid-${i}.txt`;
        const res = await put(path, 'x', headers);
        expect(res.status).toBe(400);
        expect(JSON.parse(res.body)).toMatchObject({ code: 400, message: expect.stringContaining('invalid metadata') });
        expect(existsSync(path)).toBe(false);
      }
    });

    it('refuses metadata with a clear 400 where the filesystem keeps no user attributes, leaving files as they were', async () => {
      // ramfs has no extended attributes at all, like tmpfs before Linux 6.6 (a guest's /tmp) has no user.* ones.
      const mountPoint = `${dir}/ramfs`;
      await mkdir(mountPoint);
      expect(spawnSync('mount', ['-t', 'ramfs', '-o', 'mode=0777', 'ramfs', mountPoint]).status).toBe(0);
      try {
        const refused = await put(`${mountPoint}/new.txt`, 'x', { 'X-Metadata-Author': 'mish' });
        expect(refused.status).toBe(400);
        expect(JSON.parse(refused.body).message).toMatch(/does not support user extended attributes/);
        expect(existsSync(`${mountPoint}/new.txt`)).toBe(false);

        expect((await put(`${mountPoint}/kept.txt`, 'original')).status).toBe(200);
        expect((await put(`${mountPoint}/kept.txt`, 'replacement', { 'X-Metadata-Author': 'mish' })).status).toBe(400);
        expect(await readFile(`${mountPoint}/kept.txt`, 'utf8')).toBe('original');
        const stat = await agent.filesystemClient().stat({ path: `${mountPoint}/kept.txt` });
        expect(stat.entry?.metadata).toEqual({});
      } finally {
        spawnSync('umount', [mountPoint]);
      }
    });
  });

  it('answers 404, 400 and 403 as envd does (and 400 for FIFOs), and stays up', async () => {
    const missing = await fetch(`${agent.url}/files?path=${encodeURIComponent(`${dir}/nope`)}`);
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({ code: 404, message: expect.stringContaining('does not exist') });
    expect((await fetch(`${agent.url}/files?path=${encodeURIComponent(dir)}`)).status).toBe(400);
    expect((await fetch(`${agent.url}/files`)).status).toBe(400);
    const privateDir = `/tmp/kiln-ga-private-http-${process.pid}`;
    await mkdir(privateDir, { mode: 0o700 });
    await writeFile(`${privateDir}/secret`, 's');
    try {
      expect((await fetch(`${agent.url}/files?path=${privateDir}/secret`)).status).toBe(403);
      expect((await fetch(`${agent.url}/files?path=${privateDir}/secret&username=root`)).status).toBe(200);
    } finally {
      await rm(privateDir, { recursive: true, force: true });
    }
    const asRoot = await fetch(`${agent.url}/files?path=/etc/hostname&username=root`);
    expect(asRoot.status).toBe(200);
    const unknownUser = await fetch(`${agent.url}/files?path=/etc/hostname&username=nobody-like-this`);
    expect(unknownUser.status).toBe(401);
    const badMultipart = await fetch(`${agent.url}/files?path=${encodeURIComponent(`${dir}/x`)}`, {
      method: 'POST',
      headers: { 'content-type': 'multipart/form-data; boundary=zzz' },
      body: '--zzz\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\npartial',
    });
    expect(badMultipart.status).toBe(400);
    // A FIFO would block a worker thread forever if opened; it is refused up front, both ways.
    spawnSync('mkfifo', [`${dir}/fifo`]);
    expect((await fetch(`${agent.url}/files?path=${encodeURIComponent(`${dir}/fifo`)}`)).status).toBe(400);
    const intoFifo = await fetch(`${agent.url}/files?path=${encodeURIComponent(`${dir}/fifo`)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: 'x',
    });
    expect(intoFifo.status).toBe(400);
    const notJson = await fetch(`${agent.url}/init`, { method: 'POST', body: '{nope' });
    expect(notJson.status).toBe(400);
    for (const nameservers of ['8.8.8.8', ['not-an-ip'], ['1.1.1.1', '8.8.8.8', '9.9.9.9', '8.8.4.4'], [53]]) {
      const badResolvers = await fetch(`${agent.url}/init`, { method: 'POST', body: JSON.stringify({ nameservers }) });
      expect(badResolvers.status).toBe(400);
      expect(((await badResolvers.json()) as { message: string }).message).toMatch(/nameservers/);
    }
    for (const entropySeed of [42, 'not base64!', Buffer.alloc(8).toString('base64'), Buffer.alloc(600).toString('base64')]) {
      const badSeed = await fetch(`${agent.url}/init`, { method: 'POST', body: JSON.stringify({ entropySeed }) });
      expect(badSeed.status).toBe(400);
      expect(((await badSeed.json()) as { message: string }).message).toMatch(/entropySeed/);
    }
    expect((await fetch(`${agent.url}/no-such-route`)).status).toBe(404);
    expect(agent.isAlive).toBe(true);
  });

  it('streams a 200 MB upload and download with agent peak RSS below 150 MB', async () => {
    const path = `${dir}/big.bin`;
    const source = generated(200);
    const up = await upload(agent, `path=${encodeURIComponent(path)}`, source.stream, { 'content-type': 'application/octet-stream' });
    expect(up.status).toBe(200);
    expect((await stat(path)).size).toBe(200 * MiB);
    const down = await downloadDigest(agent, `path=${encodeURIComponent(path)}`);
    expect(down.status).toBe(200);
    expect(down.bytes).toBe(200 * MiB);
    expect(down.digest).toBe(source.digest());
    expect(agent.peakRssBytes()).toBeLessThan(150 * MiB);
    await rm(path);
  });

  it('serves gzip when the client accepts it', async () => {
    const path = `${dir}/text.txt`;
    await writeFile(path, 'compress me '.repeat(1000));
    const res = await fetch(`${agent.url}/files?path=${encodeURIComponent(path)}`, { headers: { 'accept-encoding': 'gzip' } });
    expect(res.headers.get('content-encoding')).toBe('gzip');
    expect(await res.text()).toBe('compress me '.repeat(1000)); // fetch decodes it
  });

  it('reports metrics with envd field names; /init env vars, workdir and default user reach processes and files', async () => {
    const metrics = (await (await fetch(`${agent.url}/metrics`)).json()) as Record<string, number>;
    for (const field of ['ts', 'cpu_count', 'cpu_used_pct', 'mem_total', 'mem_used', 'mem_total_mib', 'mem_used_mib', 'disk_used', 'disk_total']) {
      expect(typeof metrics[field]).toBe('number');
    }
    expect(metrics.mem_total).toBeGreaterThan(metrics.mem_used);
    const init = { envVars: { KILN_TEST_VAR: 'from-init' }, timestamp: new Date().toISOString(), defaultWorkdir: '/tmp' };
    expect((await agent.init(init)).status).toBe(204);
    expect((await agent.init(init)).status).toBe(204); // idempotent
    expect(await (await fetch(`${agent.url}/envs`)).json()).toEqual({ KILN_TEST_VAR: 'from-init' });
    let out = '';
    for await (const m of agent.processClient().start({ process: { cmd: '/bin/bash', args: ['-c', 'echo $KILN_TEST_VAR; pwd'], envs: {} } })) {
      const e = m.event?.event;
      if (e?.case === 'data' && e.value.output.case === 'stdout') out += Buffer.from(e.value.output.value).toString();
    }
    expect(out).toBe('from-init\n/tmp\n');

    // defaultUser from /init applies to requests that name no user (RPC without Authorization, /files without username).
    expect((await agent.init({ defaultUser: 'root' })).status).toBe(204);
    let who = '';
    for await (const m of agent.processClient().start({ process: { cmd: 'whoami', args: [], envs: {} } })) {
      const e = m.event?.event;
      if (e?.case === 'data' && e.value.output.case === 'stdout') who += Buffer.from(e.value.output.value).toString();
    }
    expect(who).toBe('root\n');
    const rootOnly = `/tmp/kiln-ga-root-only-${process.pid}`;
    await writeFile(rootOnly, 'secret', { mode: 0o600 });
    try {
      expect((await fetch(`${agent.url}/files?path=${rootOnly}`)).status).toBe(200);
    } finally {
      await rm(rootOnly, { force: true });
    }
    expect((await agent.init({ defaultUser: 'user' })).status).toBe(204);
  });
});
