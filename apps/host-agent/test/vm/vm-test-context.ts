import 'reflect-metadata';
import { link, mkdir, mkdtemp, readFile, readlink, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Module, type INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { DEFAULT_GUEST_NAMESERVERS, ipListEntries } from '@kiln/config';
import { NetworkModule, NetworkSlotPool, type NetworkSlot } from '../../src/network';
import { RootfsLayers, RootfsModule } from '../../src/rootfs';
import { SnapshotModule, TemplateSnapshots } from '../../src/snapshot';
import { TemplateModule, TemplateStore, type TemplateBuild } from '../../src/template';
import { AccelerationProbe, VMM_DRIVER, VmmConfig, VmmModule, type VmHandle, type VmmDriver } from '../../src/vmm';

export const DATA_DIR = process.env.KILN_DATA_DIR ?? '/var/lib/kiln';

/** Undo actions run in reverse order, each one even if an earlier one failed. */
export class Cleanup {
  private readonly actions: Array<() => Promise<unknown>> = [];

  add(action: () => Promise<unknown>): void {
    this.actions.push(action);
  }

  /** Kills the VM (if still running) when the test ends, however it ends. */
  vm(handle: VmHandle): VmHandle {
    this.add(async () => {
      if (!handle.hasExited) {
        try {
          process.kill(handle.pid, 'SIGKILL');
        } catch {
          /* gone already */
        }
        await Promise.race([handle.exited, new Promise((r) => setTimeout(r, 5_000))]);
      }
    });
    return handle;
  }

  async run(): Promise<void> {
    const errors: unknown[] = [];
    while (this.actions.length > 0) {
      const action = this.actions.pop()!;
      await action().catch((error: unknown) => errors.push(error));
    }
    if (errors.length > 0) throw new AggregateError(errors, 'cleanup failed');
  }
}

export interface VmTestApp {
  app: INestApplicationContext;
  pool: NetworkSlotPool;
  driver: VmmDriver;
  probe: AccelerationProbe;
  config: VmmConfig;
  templates: TemplateStore;
  snapshots: TemplateSnapshots;
  layers: RootfsLayers;
  /** Per-run scratch dir (VM state dirs, disks, serial logs); removed by close(). */
  workDir: string;
  acquireSlot(cleanup: Cleanup): Promise<NetworkSlot>;
  close(): Promise<void>;
}

/**
 * The VM layer wired the way the agent wires it, with a network slot pool whose names and
 * addresses are private to these tests (prefix ktvm, 10.203.0.0/24).
 */
export async function startVmTestApp(): Promise<VmTestApp> {
  const workDir = await mkdtemp('/tmp/kiln-vm-');
  const network = NetworkModule.register({ namePrefix: 'ktvm', slotCidr: '10.203.0.0/24', prefill: 1, maxIdle: 2 });

  @Module({
    imports: [
      network,
      RootfsModule.register({ driver: 'qcow2', vmm: 'qemu' }),
      TemplateModule.register({ dataDir: DATA_DIR }),
      VmmModule,
      // The agent's default resolvers, so the shared `base` snapshot this may make is the one an agent would make.
      SnapshotModule.register({
        imports: [network],
        dataDir: DATA_DIR,
        runDir: join(workDir, 'template-boot'),
        bootTimeoutMs: 120_000,
        guestNameservers: ipListEntries(DEFAULT_GUEST_NAMESERVERS),
      }),
    ],
  })
  class VmTestModule {}

  const app = await NestFactory.createApplicationContext(VmTestModule, { logger: ['error', 'warn'], abortOnError: false });
  const pool = app.get(NetworkSlotPool);
  await pool.init();
  const context: VmTestApp = {
    app,
    pool,
    driver: app.get<VmmDriver>(VMM_DRIVER),
    probe: app.get(AccelerationProbe),
    config: app.get(VmmConfig),
    templates: app.get(TemplateStore),
    snapshots: app.get(TemplateSnapshots),
    layers: app.get(RootfsLayers),
    workDir,
    async acquireSlot(cleanup: Cleanup) {
      const slot = await pool.acquire();
      cleanup.add(() => pool.release(slot));
      return slot;
    },
    async close() {
      try {
        await pool.destroyAll();
        await app.close();
      } finally {
        await rm(workDir, { recursive: true, force: true });
      }
    },
  };
  return context;
}

/**
 * A private template `<name>` whose current build hard-links the base template's files, so
 * a test can create and delete its snapshot without touching the real base's snapshot.
 */
export async function registerTestTemplate(templates: TemplateStore, name: string, cleanup: Cleanup): Promise<TemplateBuild> {
  const base = await templates.resolve('base');
  const templateDir = join(templates.root, name);
  await rm(templateDir, { recursive: true, force: true });
  cleanup.add(() => rm(templateDir, { recursive: true, force: true }));
  const buildDir = join(templateDir, base.buildId);
  await mkdir(buildDir, { recursive: true });
  for (const file of ['vmlinuz', 'initramfs.cpio.gz', 'rootfs.ext4', 'template.json', 'kernel.release']) {
    await link(join(base.dir, file), join(buildDir, file));
  }
  await symlink(base.buildId, join(templateDir, 'current'));
  expect(await readlink(join(templateDir, 'current'))).toBe(base.buildId);
  return templates.resolve(name);
}

export async function readText(path: string): Promise<string> {
  return readFile(path, 'utf8').catch(() => '');
}
