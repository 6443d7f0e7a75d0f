import { spawn, spawnSync } from 'node:child_process';
import { closeSync, constants, openSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const REPO = resolve(__dirname, '..', '..', '..', '..');
const MAIN = join(REPO, 'apps', 'host-agent', 'dist', 'main.js');

function runAgent(env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  return new Promise((resolvePromise) => {
    const started = Date.now();
    const child = spawn(process.execPath, [MAIN], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}

/**
 * What the refusal must add about /dev/kvm on the machine the test runs on: nothing where it is a usable character
 * device, its own piece where it is absent (some CI machines have no node at all) or cannot be opened.
 */
function kvmPiece(): string {
  try {
    if (!statSync('/dev/kvm').isCharacterDevice()) return '; /dev/kvm is not a character device';
    closeSync(openSync('/dev/kvm', constants.O_RDWR));
    return '';
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? '; no /dev/kvm' : `; /dev/kvm cannot be opened read-write (${code})`;
  }
}

describe('the built host agent with KILN_VMM=firecracker on a host without Firecracker', () => {
  let dataDir: string;
  const baseEnv = () => ({
    PATH: process.env.PATH,
    KILN_HOST_STATE_KEY: 'a-host-state-key-of-thirty-two-chars',
    KILN_DATA_DIR: dataDir,
    // Nothing listens here: an agent that got as far as NATS would fail differently (and later).
    NATS_URL: 'nats://127.0.0.1:1',
    LOG_LEVEL: 'error',
  });

  beforeAll(async () => {
    // The spawned agent is the compiled one (as tools/stack runs it): build it if needed (incremental, quick when current).
    const build = spawnSync('npx', ['tsc', '-b', 'apps/host-agent/tsconfig.json'], { cwd: REPO, encoding: 'utf8' });
    if (build.status !== 0) throw new Error(`host agent build failed: ${build.stdout}${build.stderr}`);
    dataDir = await mkdtemp(join(tmpdir(), 'kiln-fc-refuse-'));
  }, 180_000);

  afterAll(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('refuses to start: exit 69 (EX_UNAVAILABLE), one line on stderr naming each missing piece, before connecting to anything', async () => {
    const missing = join(dataDir, 'missing');
    const result = await runAgent({
      ...baseEnv(),
      KILN_VMM: 'firecracker',
      KILN_FIRECRACKER_BINARY: join(missing, 'firecracker'),
      KILN_JAILER_BINARY: join(missing, 'jailer'),
      KILN_FIRECRACKER_KERNEL: join(missing, 'vmlinux'),
    });
    expect(result.code).toBe(69);
    expect(result.stderr.endsWith('\n')).toBe(true);
    expect(result.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(result.stderr).toBe(
      `host-agent: fatal: KILN_VMM=firecracker but this host cannot run it: no firecracker binary at KILN_FIRECRACKER_BINARY=${missing}/firecracker; ` +
        `no jailer binary at KILN_JAILER_BINARY=${missing}/jailer; no kernel at KILN_FIRECRACKER_KERNEL=${missing}/vmlinux${kvmPiece()}\n`,
    );
    expect(result.stdout).not.toMatch(/NATS|nats/);
  }, 60_000);

  it('control: the same agent with KILN_VMM=qemu gets past that check (and fails later, at NATS, which is not running here)', async () => {
    const result = await runAgent({ ...baseEnv(), KILN_VMM: 'qemu' });
    expect(result.stderr).not.toContain('KILN_VMM=firecracker');
    expect(result.stderr).toMatch(/host-agent: fatal: .*(NATS|nats|127\.0\.0\.1:1)/);
  }, 60_000);
});
