import { spawn } from 'node:child_process';
import { mkdtemp, open, readFile, realpath, rm } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runHostCommand } from '../../src/host-command/host-command';
import { sha256File } from '../../src/snapshot';
import { DATA_DIR } from './vm-test-context';

const REPO = resolve(__dirname, '../../../..');
const BUILD_SCRIPT = join(REPO, 'tools/guest-image/build.sh');

function runBuild(): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  return new Promise((resolvePromise, reject) => {
    const started = Date.now();
    const child = spawn('bash', [BUILD_SCRIPT], { env: { ...process.env, KILN_DATA_DIR: DATA_DIR }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.once('error', reject);
    child.once('close', (code) => resolvePromise({ code, stdout, stderr, ms: Date.now() - started }));
  });
}

// Normally runs after `npx nx run guest-image:build` (a dependency of the e2e target), so the
// first build below finds the image already current too.
describe('guest image pipeline (tools/guest-image)', () => {
  let build: Awaited<ReturnType<typeof runBuild>>;
  let buildDir: string;

  beforeAll(async () => {
    // The first run builds only if an input changed since the last build; the second must not.
    const first = await runBuild();
    expect(first.code).toBe(0);
    build = await runBuild();
    buildDir = build.stdout.trim().split('\n').pop() ?? '';
  });

  it('is a no-op when its inputs are unchanged', async () => {
    expect(build.code).toBe(0);
    expect(build.stderr).toContain('inputs unchanged');
    expect(build.stderr).not.toContain('mmdebstrap');
    expect(build.ms).toBeLessThan(15_000);
    expect(await realpath(join(DATA_DIR, 'templates/base/current'))).toBe(await realpath(buildDir));
  });

  it('ships a Debian kernel whose release differs from the host kernel', async () => {
    const manifest = JSON.parse(await readFile(join(buildDir, 'template.json'), 'utf8'));
    expect(manifest.kernelRelease).toMatch(/^\d+\.\d+\.\d+-\d+-cloud-amd64$/);
    expect(manifest.kernelRelease).not.toBe(release());
    // A bzImage carries the "HdrS" boot protocol signature at 0x202.
    const kernel = await open(join(buildDir, 'vmlinuz'), 'r');
    try {
      const { buffer } = await kernel.read(Buffer.alloc(4), 0, 4, 0x202);
      expect(buffer.toString('latin1')).toBe('HdrS');
    } finally {
      await kernel.close();
    }
  });

  it('puts the guest agent bundle, node and the init script into the rootfs', async () => {
    const scratch = await mkdtemp(join(tmpdir(), 'kiln-image-'));
    try {
      const rootfs = join(buildDir, 'rootfs.ext4');
      const dump = async (inImage: string, out: string) =>
        runHostCommand('debugfs', ['-R', `dump ${inImage} ${join(scratch, out)}`, rootfs]);
      await dump('/opt/kiln/guest-agent/guest-agent.js', 'agent.js');
      await dump('/usr/local/bin/node', 'node');
      await dump('/opt/kiln/init', 'init');
      const bundle = process.env.KILN_GUEST_AGENT_BUNDLE ?? join(REPO, 'apps/guest-agent/dist/bundle');
      expect(await sha256File(join(scratch, 'agent.js'))).toBe(await sha256File(join(bundle, 'guest-agent.js')));
      expect(await sha256File(join(scratch, 'node'))).toBe(await sha256File(process.execPath));
      expect(await readFile(join(scratch, 'init'), 'utf8')).toContain('--port 49983');
      const { stdout } = await runHostCommand('debugfs', ['-R', 'stat /home/user', rootfs]);
      expect(stdout).toMatch(/User:\s+1000\s+Group:\s+1000/);
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  });
});
