import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { TemplateBuild } from '../../src/template';
import { Cleanup, registerTestTemplate, startVmTestApp, type VmTestApp } from './vm-test-context';

/**
 * The snapshot's files are made by the agent (QEMU streams the device state to a socket in its chroot) and read by
 * every clone's VMM: their modes must be set by the agent, not left to its umask.
 */
describe('template snapshot with the agent at umask 077 (real TCG VM)', () => {
  let ctx: VmTestApp;
  const cleanup = new Cleanup();
  let build: TemplateBuild;

  beforeAll(async () => {
    ctx = await startVmTestApp();
    // The template's own directories come from the image build (not the agent), so they are made at the usual umask.
    build = await registerTestTemplate(ctx.templates, 'ktvm-umask', cleanup);
  });

  afterAll(async () => {
    try {
      await cleanup.run();
    } finally {
      await ctx?.close();
    }
  });

  it('makes the snapshot, and its directory and frozen disk have explicit modes', async () => {
    const previousUmask = process.umask(0o077);
    try {
      const snapshot = await ctx.snapshots.ensure('ktvm-umask');
      expect(snapshot.dir).toBe(build.snapshotDir);
      const manifest = JSON.parse(await readFile(join(snapshot.dir, 'manifest.json'), 'utf8'));
      expect(manifest.files.state.bytes).toBeGreaterThan(0);
      expect((await stat(snapshot.dir)).mode & 0o777).toBe(0o755);
      expect((await stat(join(snapshot.dir, 'disk.qcow2'))).mode & 0o777).toBe(0o644);
    } finally {
      process.umask(previousUmask);
    }
  });
});
