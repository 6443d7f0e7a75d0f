import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom, toArray } from 'rxjs';
import type { ArtifactStore } from '@kiln/artifacts';
import type { BuildTemplateRequest } from '@kiln/proto/hostagent';
import type { NetworkSlotPool } from '../network';
import type { TemplateSnapshots } from '../snapshot';
import type { TemplateStore } from '../template';
import type { VmmDriver } from '../vmm';
import type { BaseLayers } from './base-layers';
import { BuildAlreadyRunningError, InvalidBuildRequestError } from './template-build.errors';
import { TemplateBuildService } from './template-build.service';

/** The service's own bookkeeping, with stand-ins for what it drives (the VM suite runs real builds). */
describe('TemplateBuildService', () => {
  let dataDir: string;
  let terminated: string[];
  let service: TemplateBuildService;

  beforeEach(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'kiln-tb-service-'));
    terminated = [];
    const driver = { terminate: async (stateDir: string) => (terminated.push(stateDir), true) } as unknown as VmmDriver;
    const templates = { root: join(dataDir, 'templates'), resolve: async () => ({ vcpus: 1, memoryMib: 512 }) } as unknown as TemplateStore;
    service = new TemplateBuildService(
      templates,
      {} as TemplateSnapshots,
      driver,
      {} as NetworkSlotPool,
      {} as ArtifactStore,
      {} as BaseLayers,
      { dataDir, concurrency: 1, stepTimeoutMs: 60_000, bootTimeoutMs: 60_000, guestNameservers: [], runtimeTemplateId: 'base' },
    );
  });
  afterEach(() => rm(dataDir, { recursive: true, force: true }));

  it('at start, kills the VMs of builds a previous agent was running and removes their scratch space and partial results', async () => {
    const stepDir = join(dataDir, 'build-cache', 'tmp', 'b1-abcd', 's2');
    await mkdir(join(stepDir, 'r', 'vm'), { recursive: true });
    await writeFile(join(stepDir, 'disk.qcow2'), 'overlay');
    const layers = join(dataDir, 'build-cache', 'layers');
    await mkdir(join(layers, `${'a'.repeat(64)}.partial-1234`), { recursive: true });
    await mkdir(join(layers, 'b'.repeat(64)), { recursive: true });
    const templateDir = join(dataDir, 'templates', 'app');
    await mkdir(join(templateDir, '.b1.partial-99'), { recursive: true });
    await mkdir(join(templateDir, 'b0'), { recursive: true });

    await service.onModuleInit();

    expect(terminated).toEqual([join(stepDir, 'r', 'vm')]);
    expect(await readdir(join(dataDir, 'build-cache', 'tmp'))).toEqual([]);
    // Finished layers and template builds stay.
    expect(await readdir(layers)).toEqual(['b'.repeat(64)]);
    expect(await readdir(templateDir)).toEqual(['b0']);
  });

  const request = (overrides: Partial<BuildTemplateRequest>): BuildTemplateRequest => ({
      templateId: 'app',
      buildId: 'b1',
      base: { template: { templateId: 'base', buildId: '' }, image: undefined, registry: undefined },
      steps: [],
      startCmd: '',
      readyCmd: '',
      vcpus: 0,
      memoryMib: 0,
      diskMib: 0,
      force: false,
      ...overrides,
    });

  it('refuses a malformed request with a typed error before anything runs', async () => {
    for (const bad of [
      request({ templateId: '../etc' }),
      request({ base: { template: undefined, image: undefined, registry: undefined } }),
      request({ steps: [{ type: 'FROM', args: ['x'], filesHash: '', filesPath: '', filesSha256: '', force: false }] }),
      request({ memoryMib: 16 }),
    ]) {
      await expect(firstValueFrom(service.build(bad).pipe(toArray()))).rejects.toBeInstanceOf(InvalidBuildRequestError);
    }
    expect(await readdir(join(dataDir, 'build-cache', 'tmp')).catch(() => [])).toEqual([]);
  });

  it('refuses the same build while it runs, and queues other builds beyond the concurrency (telling the caller)', async () => {
    const stalled = new TemplateBuildService(
      { root: join(dataDir, 'templates'), resolve: () => new Promise(() => undefined) } as unknown as TemplateStore,
      {} as TemplateSnapshots,
      {} as VmmDriver,
      {} as NetworkSlotPool,
      {} as ArtifactStore,
      {} as BaseLayers,
      { dataDir, concurrency: 1, stepTimeoutMs: 60_000, bootTimeoutMs: 60_000, guestNameservers: [], runtimeTemplateId: 'base' },
    );
    const first = stalled.build(request({})).subscribe({ error: () => undefined });
    await expect(firstValueFrom(stalled.build(request({})))).rejects.toBeInstanceOf(BuildAlreadyRunningError);
    const queued: string[] = [];
    const second = stalled.build(request({ buildId: 'b2' })).subscribe({ next: (e) => e.log && queued.push(e.log.message), error: () => undefined });
    expect(queued).toEqual(['waiting for another build on this host to finish']);
    second.unsubscribe();
    first.unsubscribe();
  });
});
