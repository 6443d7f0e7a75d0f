import { chmod, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HOST_CREDENTIAL_FILE, HostCredentialStore } from './host-credential-store';

describe('HostCredentialStore (a real data dir)', () => {
  let dataDir: string;

  beforeEach(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'kiln-credential-'));
  });

  afterEach(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('reads nothing before the first save, then what was saved, in <data dir>/host-credential', async () => {
    const store = new HostCredentialStore(dataDir);
    expect(store.path).toBe(join(dataDir, HOST_CREDENTIAL_FILE));
    await expect(store.read()).resolves.toBeUndefined();
    await store.save('the-host-credential');
    await expect(store.read()).resolves.toBe('the-host-credential');
    await expect(new HostCredentialStore(dataDir).read()).resolves.toBe('the-host-credential');
  });

  it('replaces a file by a new one of mode 0600 (whatever the old one had), leaving no temporary file behind', async () => {
    await writeFile(join(dataDir, HOST_CREDENTIAL_FILE), 'an-older-credential\n');
    await chmod(join(dataDir, HOST_CREDENTIAL_FILE), 0o644);
    // A temp file left by a crash mid-write, readable by all: it must not lend its mode to the new credential.
    await writeFile(join(dataDir, `${HOST_CREDENTIAL_FILE}.${process.pid}.tmp`), 'half');
    await chmod(join(dataDir, `${HOST_CREDENTIAL_FILE}.${process.pid}.tmp`), 0o644);

    const store = new HostCredentialStore(dataDir);
    await store.save('a-newer-credential');
    expect(await readFile(store.path, 'utf8')).toBe('a-newer-credential\n');
    expect((await stat(store.path)).mode & 0o777).toBe(0o600);
    expect(await readdir(dataDir)).toEqual([HOST_CREDENTIAL_FILE]);
  });

  it('creates the data dir when it does not exist yet, and treats an empty file as no credential', async () => {
    const store = new HostCredentialStore(join(dataDir, 'not-yet'));
    await store.save('first');
    await expect(store.read()).resolves.toBe('first');
    await writeFile(store.path, '\n');
    await expect(store.read()).resolves.toBeUndefined();
  });
});
