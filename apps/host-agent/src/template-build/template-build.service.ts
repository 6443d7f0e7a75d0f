import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { linkOrCopy } from '../file-integrity';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Inject, Injectable, Logger, type OnModuleInit } from '@nestjs/common';
import { Observable } from 'rxjs';
import { ARTIFACT_STORE, ArtifactIntegrityError, ArtifactNotFoundError, type ArtifactStore, LocalArtifactStore } from '@kiln/artifacts';
import { ENVD_COMPAT_VERSION, KilnError } from '@kiln/contracts';
import type { BuildArtifact, BuildTemplateEvent, BuildTemplateRequest, BuildTemplateResult } from '@kiln/proto/hostagent';
import { NetworkSlotPool } from '../network';
import { TemplateReadyError, TemplateSnapshots, type TemplateSnapshot } from '../snapshot';
import { TemplateStore, type TemplateBuild, type TemplateManifest } from '../template';
import { VMM_DRIVER, type VmmDriver } from '../vmm';
import { BaseLayers } from './base-layers';
import { BaseLayerUserError } from './base-layers/base-layers.errors';
import { applyToContext, baseKey, forcedLayerKey, layerKey, needsFilesystem, normaliseAbsolute, parseStep, type BuildContext, type ParsedStep } from './build-steps';
import { BuildVm } from './build-vm';
import { COPY_SCRIPT, ENSURE_WORKDIR_SCRIPT } from './guest-scripts';
import { LayerStore, type ParentDisk } from './layer-store';
import { flattenRootfs, passwdEntry } from './rootfs-image';
import { BaseLayerUnavailableError, BuildAlreadyRunningError, BuildCancelledError, BuildInfrastructureError, InvalidBuildRequestError, UserStepError } from './template-build.errors';
import { TEMPLATE_BUILD_OPTIONS, type TemplateBuildOptions } from './template-build.options';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** The files of a built template, as published to the artifact store. */
const TEMPLATE_FILES = { rootfs: 'rootfs.ext4', kernel: 'vmlinuz', initrd: 'initramfs.cpio.gz', manifest: 'template.json' } as const;

/** What a template build writes into template.json besides the store's TemplateManifest. */
export interface BuiltTemplateManifest extends TemplateManifest {
  envs: Record<string, string>;
  workdir?: string;
  user: string;
  startCmd?: string;
  readyCmd?: string;
  diskMib: number;
  /** The guest runtime build the template boots with. */
  runtimeBuildId: string;
}

interface BuildRun {
  request: BuildTemplateRequest;
  signal: AbortSignal;
  scratch: string;
  runtime: TemplateBuild;
  vcpus: number;
  memoryMib: number;
  log: (step: number, message: string, level?: string) => void;
  stepDone: (step: number, cached: boolean, layerKey: string, startedAt: number) => void;
}

/**
 * Builds templates from definitions (the host side of BuildTemplate): a base, then each RUN/COPY in a build VM of
 * its own over the previous step's layer (reused from the layer cache when its key is there), then the flattened
 * rootfs, the template build directory and its snapshot (start and ready commands), published to the artifact store.
 * Every VM, slot, overlay and scratch file a build makes is removed however it ends; only finished layers stay.
 */
@Injectable()
export class TemplateBuildService implements OnModuleInit {
  private readonly logger = new Logger(TemplateBuildService.name);
  private readonly layers: LayerStore;
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  /** `<template>/<build>` of every build accepted and not finished: the same build twice at once would share a dir. */
  private readonly active = new Set<string>();

  constructor(
    @Inject(TemplateStore) private readonly templates: TemplateStore,
    @Inject(TemplateSnapshots) private readonly snapshots: TemplateSnapshots,
    @Inject(VMM_DRIVER) private readonly driver: VmmDriver,
    @Inject(NetworkSlotPool) private readonly network: NetworkSlotPool,
    @Inject(ARTIFACT_STORE) private readonly artifacts: ArtifactStore,
    @Inject(BaseLayers) private readonly baseLayers: BaseLayers,
    @Inject(TEMPLATE_BUILD_OPTIONS) private readonly options: TemplateBuildOptions,
  ) {
    this.layers = new LayerStore(join(options.dataDir, 'build-cache'));
  }

  /** A restarted agent has no build running: VMs and scratch space of builds it was running are leftovers. */
  async onModuleInit(): Promise<void> {
    for (const build of await readdir(this.layers.tmpDir).catch(() => [] as string[])) {
      for (const step of await readdir(join(this.layers.tmpDir, build)).catch(() => [] as string[])) {
        const stateDir = join(this.layers.tmpDir, build, step, 'r', 'vm');
        if (await this.driver.terminate(stateDir).catch(() => false)) this.logger.warn(`killed leftover build VM in ${stateDir}`);
      }
    }
    await this.layers.removeLeftovers();
    // Template build dirs still being assembled when the agent stopped (never resolvable: their names start with '.').
    for (const template of await readdir(this.templates.root).catch(() => [] as string[])) {
      for (const name of await readdir(join(this.templates.root, template)).catch(() => [] as string[])) {
        if (name.startsWith('.') && name.includes('.partial-')) await rm(join(this.templates.root, template, name), { recursive: true, force: true });
      }
    }
  }

  /**
   * The build as a stream of events, ending with exactly one result or failed event (a user step's failure), or an
   * error (infrastructure). Unsubscribing (the gRPC call cancelled) aborts the build and cleans up after it.
   */
  build(request: BuildTemplateRequest): Observable<BuildTemplateEvent> {
    return new Observable<BuildTemplateEvent>((subscriber) => {
      const abort = new AbortController();
      const emit = (event: BuildTemplateEvent) => {
        if (!subscriber.closed) subscriber.next(event);
      };
      const identity = `${request.templateId}/${request.buildId}`;
      if (this.active.has(identity)) {
        subscriber.error(new BuildAlreadyRunningError(`build ${identity} is already running on this host`));
        return undefined;
      }
      this.active.add(identity);
      if (this.running >= this.options.concurrency) {
        emit({ log: { level: 'info', message: 'waiting for another build on this host to finish', step: 0, atMs: Date.now() } });
      }
      void this.whenAllowed(abort.signal)
        .then(async (release) => {
          try {
            return await this.execute(request, emit, abort.signal);
          } finally {
            release();
          }
        })
        .finally(() => this.active.delete(identity))
        .then(
          (result) => {
            emit({ result });
            subscriber.complete();
          },
          (error: unknown) => {
            if (error instanceof UserStepError) {
              emit({ log: { level: 'error', message: error.message, step: error.step, atMs: Date.now() } });
              emit({ failed: { step: error.step, message: error.message } });
              subscriber.complete();
              return;
            }
            if (abort.signal.aborted) {
              this.logger.log(`build ${request.templateId}/${request.buildId} cancelled`);
              subscriber.error(new BuildCancelledError());
              return;
            }
            if (!(error instanceof KilnError)) this.logger.error(`build ${request.templateId}/${request.buildId}: ${(error as Error).stack ?? error}`);
            subscriber.error(error instanceof KilnError ? error : new BuildInfrastructureError((error as Error).message ?? String(error)));
          },
        );
      return () => abort.abort(new BuildCancelledError());
    });
  }

  /** Waits for one of `concurrency` build places; resolves with its release. */
  private async whenAllowed(signal: AbortSignal): Promise<() => void> {
    while (this.running >= this.options.concurrency) {
      signal.throwIfAborted();
      await new Promise<void>((resolve) => {
        this.waiting.push(resolve);
        signal.addEventListener('abort', () => resolve(), { once: true });
      });
    }
    signal.throwIfAborted();
    this.running++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.running--;
      // Every waiter re-checks (one that was cancelled meanwhile just leaves): no wake-up is lost on a dead waiter.
      for (const wake of this.waiting.splice(0)) wake();
    };
  }

  private async execute(request: BuildTemplateRequest, emit: (event: BuildTemplateEvent) => void, signal: AbortSignal): Promise<BuildTemplateResult> {
    const buildStarted = performance.now();
    for (const [what, value] of [['template_id', request.templateId], ['build_id', request.buildId]] as const) {
      if (!NAME.test(value ?? '')) throw new InvalidBuildRequestError(`${what} ${JSON.stringify(value)} must match ${NAME.source}`);
    }
    const steps = (request.steps ?? []).map((step, index) => parseStep(step, index + 1));
    const finalStep = steps.length + 1;
    if (!request.base?.template && !request.base?.image) throw new InvalidBuildRequestError('base: a template or an image is required');

    const runtime = await this.templates.resolve(this.options.runtimeTemplateId).catch((error: unknown) => {
      throw new BuildInfrastructureError(`the guest runtime (template ${this.options.runtimeTemplateId}) is not on this host: ${(error as Error).message}`);
    });
    const vcpus = request.vcpus || runtime.vcpus;
    const memoryMib = request.memoryMib || runtime.memoryMib;
    if (vcpus < 1 || vcpus > 64) throw new InvalidBuildRequestError(`vcpus must be 1-64, got ${vcpus}`);
    if (memoryMib < 128 || memoryMib > 65536) throw new InvalidBuildRequestError(`memory_mib must be 128-65536, got ${memoryMib}`);

    const scratch = await this.layers.scratch(request.buildId);
    const run: BuildRun = {
      request,
      signal,
      scratch,
      runtime,
      vcpus,
      memoryMib,
      log: (step, message, level = 'info') => emit({ log: { level, message, step, atMs: Date.now() } }),
      stepDone: (step, cached, key, startedAt) => emit({ step: { step, cached, layerKey: key, durationMs: performance.now() - startedAt } }),
    };
    try {
      let { parent, context } = await this.prepareBase(run);
      let forced = request.force;
      let allCached = true;
      for (const [index, step] of steps.entries()) {
        const n = index + 1;
        const startedAt = performance.now();
        signal.throwIfAborted();
        forced ||= request.steps[index].force;
        if (!needsFilesystem(step)) {
          context = applyToContext(context, step);
          run.log(n, `${forced ? '' : 'CACHED '}[step ${n}] ${describeStep(step)}`);
          run.stepDone(n, !forced, parent.key, startedAt);
          continue;
        }
        const plainKey = layerKey(parent.key, step, context);
        const key = forced ? forcedLayerKey(plainKey, request.buildId) : plainKey;
        const cached = forced ? undefined : await this.layers.find(key);
        if (cached) {
          run.log(n, `CACHED [step ${n}] ${describeStep(step)}`);
          parent = cached;
        } else {
          allCached = false;
          run.log(n, `[step ${n}] ${describeStep(step)}`);
          parent = await this.runFilesystemStep(run, n, step, parent, key, context);
        }
        run.stepDone(n, Boolean(cached), parent.key, startedAt);
      }
      const result = await this.finalize(run, finalStep, parent, context);
      const summary = `build finished in ${((performance.now() - buildStarted) / 1000).toFixed(1)} s${allCached ? ' (every step from the cache)' : ''}`;
      run.log(finalStep, summary);
      this.logger.log(`template ${request.templateId}/${request.buildId}: ${summary}`);
      return result;
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }

  /** Step 0: the base's disk and the context its steps start with. */
  private async prepareBase(run: BuildRun): Promise<{ parent: ParentDisk; context: BuildContext }> {
    const startedAt = performance.now();
    const base = run.request.base!;
    if (base.template) {
      const ref = base.template;
      const build = await this.templates.resolve(ref.templateId, ref.buildId || undefined).catch((error: unknown) => {
        throw new UserStepError(0, `step 0: base template ${ref.templateId}${ref.buildId ? `/${ref.buildId}` : ''} is not on this host: ${(error as Error).message}`);
      });
      const key = baseKey({ template: { templateId: build.templateId, buildId: build.buildId } });
      run.log(0, `[base] template ${build.templateId} (build ${build.buildId})`);
      const context: BuildContext = { envs: { ...(build.envs ?? {}) }, workdir: build.workdir, user: build.user ?? 'user' };
      run.stepDone(0, true, key, startedAt);
      return { parent: { key, path: build.rootfs.path, format: build.rootfs.format }, context };
    }
    const image = base.image!;
    run.log(0, `[base] image ${image}`);
    const credentials = base.registry?.username ? { username: base.registry.username, password: base.registry.password } : undefined;
    let prepared;
    try {
      prepared = await this.baseLayers.prepare(image, credentials, (line) => run.log(0, line), run.signal);
    } catch (error) {
      if (run.signal.aborted) throw run.signal.reason;
      if (error instanceof BaseLayerUserError) throw new UserStepError(0, `step 0: ${error.message}`);
      if (error instanceof KilnError) throw error;
      throw new BaseLayerUnavailableError(`base image ${image}: ${(error as Error).message}`);
    }
    const key = baseKey({ imageKey: prepared.key });
    // E2B's default for templates is `user` (created in every base layer), not Docker's root: an image that names no
    // User gets it. An image that does keeps its own. A User may be `uid[:gid]`: the guest agent runs commands as
    // names, so a uid becomes its passwd name.
    let user = prepared.config.user?.split(':')[0] || 'user';
    if (/^\d+$/.test(user)) {
      const entry = await passwdEntry(prepared.rootfsPath, user);
      if (!entry) throw new UserStepError(0, `step 0: the image's user ${prepared.config.user} has no /etc/passwd entry`);
      user = entry.name;
    }
    const context: BuildContext = {
      envs: { ...prepared.config.env },
      workdir: prepared.config.workdir ? normaliseAbsolute(prepared.config.workdir, '/') : undefined,
      user,
    };
    run.stepDone(0, false, key, startedAt);
    return { parent: { key, path: prepared.rootfsPath, format: 'raw' }, context };
  }

  /** RUN or COPY in a build VM over `parent`; its disk becomes the layer of `key`. */
  private async runFilesystemStep(
    run: BuildRun,
    n: number,
    step: Extract<ParsedStep, { type: 'RUN' | 'COPY' }>,
    parent: ParentDisk,
    key: string,
    context: BuildContext,
  ): Promise<ParentDisk> {
    const dir = join(run.scratch, `s${n}`);
    await mkdir(dir, { recursive: true });
    try {
      const overlay = join(dir, 'disk.qcow2');
      await this.layers.createOverlay(overlay, parent);
      const archive = step.type === 'COPY' ? await this.fetchArchive(step, n, join(dir, 'context.tar')) : undefined;
      const vm = await BuildVm.boot(this.driver, this.network, {
        id: `build-${run.request.buildId.replace(/[^A-Za-z0-9_-]/g, '').slice(0, 24)}-${n}-${randomBytes(3).toString('hex')}`,
        runtime: run.runtime,
        vcpus: run.vcpus,
        memoryMib: run.memoryMib,
        disk: overlay,
        runDir: join(dir, 'r'),
        bootTimeoutMs: this.options.bootTimeoutMs,
        nameservers: this.options.guestNameservers,
        signal: run.signal,
      });
      try {
        const output = (_stream: 'stdout' | 'stderr', line: string) => run.log(n, line);
        const runOptions = { step: n, timeoutMs: this.options.stepTimeoutMs, signal: run.signal };
        if (context.workdir) {
          const code = await vm.run({ cmd: '/bin/bash', args: ['-c', ENSURE_WORKDIR_SCRIPT], envs: { KILN_WORKDIR: context.workdir, KILN_USER: context.user }, user: 'root' }, output, runOptions);
          if (code !== 0) throw new UserStepError(n, `step ${n} (${step.type}): WORKDIR ${context.workdir} could not be created (exit code ${code})`);
        }
        if (step.type === 'RUN') {
          const code = await vm.run(
            { cmd: '/bin/bash', args: ['-l', '-c', step.command], envs: context.envs, cwd: context.workdir, user: step.user ?? context.user },
            output,
            runOptions,
          );
          if (code !== 0) throw new UserStepError(n, `step ${n} (RUN): '${step.command}' exited with code ${code}`);
        } else {
          const guestArchive = `/tmp/kiln-context-${randomBytes(6).toString('hex')}.tar`;
          await vm.upload(archive!, guestArchive, run.signal);
          const code = await vm.run(
            {
              cmd: '/bin/bash',
              args: ['-c', COPY_SCRIPT],
              envs: { KILN_ARCHIVE: guestArchive, KILN_SRC: step.src, KILN_DEST: step.dest, KILN_WORKDIR: context.workdir ?? '', KILN_OWNER: step.user ?? '', KILN_MODE: step.mode ?? '' },
              user: 'root',
            },
            output,
            runOptions,
          );
          if (code !== 0) throw new UserStepError(n, `step ${n} (COPY): copying ${step.src} to ${step.dest} failed (exit code ${code})`);
        }
        await vm.finish(n, run.signal);
      } finally {
        await vm.destroy();
      }
      run.signal.throwIfAborted();
      return await this.layers.promote(key, overlay);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** The COPY's uploaded context archive, verified against its sha256, into the build's scratch space. */
  private async fetchArchive(step: Extract<ParsedStep, { type: 'COPY' }>, n: number, target: string): Promise<string> {
    const key = this.artifactKeyOf(step.filesPath);
    try {
      await this.artifacts.fetchTo(key, target, step.filesSha256);
    } catch (error) {
      if (error instanceof ArtifactNotFoundError) throw new UserStepError(n, `step ${n} (COPY): the files of ${step.src} were never uploaded (${key})`);
      if (error instanceof ArtifactIntegrityError) throw new BuildInfrastructureError(`step ${n} (COPY): ${error.message}`);
      throw error;
    }
    return target;
  }

  /** files_path is an artifact key (`files/<team>/<hash>`) or, from older builders, that artifact's local path. */
  private artifactKeyOf(filesPath: string): string {
    if (!filesPath.startsWith('/')) return filesPath;
    if (this.artifacts instanceof LocalArtifactStore) {
      const root = `${this.artifacts.root.replace(/\/$/, '')}/`;
      if (filesPath.startsWith(root)) return filesPath.slice(root.length);
    }
    // A path in another machine's copy of the store: the key is what follows its root.
    const at = filesPath.lastIndexOf('/files/');
    if (at === -1) throw new InvalidBuildRequestError(`files_path ${filesPath} is not in the artifact store`);
    return filesPath.slice(at + 1);
  }

  /**
   * Step N+1: rootfs, template build dir, snapshot (start and ready commands), artifacts. A build whose result
   * would be that of an earlier build on this host (same top layer, defaults, size, runtime, shape and start/ready
   * commands: a rebuild of an unchanged definition) takes that build's rootfs, snapshot and artifacts as hard links.
   */
  private async finalize(run: BuildRun, n: number, top: ParentDisk, context: BuildContext): Promise<BuildTemplateResult> {
    const { request, runtime, signal } = run;
    const startedAt = performance.now();
    const templateDir = join(this.templates.root, request.templateId);
    const buildDir = join(templateDir, request.buildId);
    // Not a valid build name (leading dot): the store never lists or resolves it.
    const staging = join(templateDir, `.${request.buildId}.partial-${randomBytes(4).toString('hex')}`);
    const defaults = { envs: sortedEnvs(context.envs), ...(context.workdir ? { workdir: context.workdir } : {}), user: context.user };
    const resultKey = createHash('sha256')
      .update(JSON.stringify({ format: 1, top: top.key, defaults, diskMib: request.diskMib, runtime: runtime.buildId, startCmd: request.startCmd, readyCmd: request.readyCmd, vcpus: run.vcpus, memoryMib: run.memoryMib }))
      .digest('hex');
    const earlier = request.force ? undefined : await this.earlierResult(resultKey);
    await mkdir(staging, { recursive: true });
    let placed = false;
    try {
      let diskMib: number;
      if (earlier) {
        run.log(n, `CACHED [finalize] rootfs and snapshot of the identical build ${earlier.build.templateId}/${earlier.build.buildId}`);
        for (const name of [TEMPLATE_FILES.rootfs, TEMPLATE_FILES.kernel, TEMPLATE_FILES.initrd]) await linkOrCopy(join(earlier.build.dir, name), join(staging, name));
        diskMib = earlier.diskMib;
      } else {
        run.log(n, '[finalize] flattening the layers into the template\'s rootfs');
        const flattened = await flattenRootfs(top, join(staging, TEMPLATE_FILES.rootfs), {
          step: n,
          diskMib: request.diskMib,
          templateJson: `${JSON.stringify(defaults, null, 2)}\n`,
          user: context.user,
          workdir: context.workdir ? { path: context.workdir, owner: context.user } : undefined,
          scratch: run.scratch,
          log: (line) => run.log(n, line),
        });
        diskMib = flattened.diskMib;
        run.log(n, `rootfs: ${flattened.contentMib} MiB of content, ${diskMib} MiB disk (${((performance.now() - startedAt) / 1000).toFixed(1)} s)`);
        signal.throwIfAborted();
        await linkOrCopy(runtime.kernelPath, join(staging, TEMPLATE_FILES.kernel));
        await linkOrCopy(runtime.initrdPath, join(staging, TEMPLATE_FILES.initrd));
        await chmod(join(staging, TEMPLATE_FILES.rootfs), 0o644);
      }
      const manifest: BuiltTemplateManifest = {
        templateId: request.templateId,
        buildId: request.buildId,
        vcpus: run.vcpus,
        memoryMib: run.memoryMib,
        kernel: TEMPLATE_FILES.kernel,
        initrd: TEMPLATE_FILES.initrd,
        rootfs: TEMPLATE_FILES.rootfs,
        rootfsFormat: 'raw',
        kernelArgs: runtime.kernelArgs,
        kernelRelease: runtime.kernelRelease,
        agentPort: runtime.agentPort,
        createdAt: new Date().toISOString(),
        ...defaults,
        ...(request.startCmd ? { startCmd: request.startCmd } : {}),
        ...(request.readyCmd ? { readyCmd: request.readyCmd } : {}),
        diskMib,
        runtimeBuildId: runtime.buildId,
      };
      await writeFile(join(staging, TEMPLATE_FILES.manifest), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o644 });
      await chmod(staging, 0o755);
      // A build id is built once; a directory under its name is a previous attempt of this very build (retried after
      // an infrastructure failure) that never reported success.
      await rm(buildDir, { recursive: true, force: true });
      await rename(staging, buildDir);
      placed = true;

      if (earlier) {
        await this.snapshots.adopt(await this.templates.resolve(request.templateId, request.buildId), earlier.snapshot);
      } else {
        const snapshotStarted = performance.now();
        run.log(n, request.startCmd ? `[finalize] template snapshot: starting '${request.startCmd}'${request.readyCmd ? `, waiting for '${request.readyCmd}'` : ''}` : '[finalize] template snapshot');
        try {
          await this.snapshots.ensure(request.templateId, request.buildId);
        } catch (error) {
          if (error instanceof TemplateReadyError) {
            for (const line of error.output.split('\n')) if (line) run.log(n, line, 'error');
            throw new UserStepError(n, `step ${n} (start/ready): ${error.message}`);
          }
          throw new BuildInfrastructureError(`step ${n}: template snapshot failed: ${(error as Error).message}`);
        }
        run.log(n, `template snapshot taken (${((performance.now() - snapshotStarted) / 1000).toFixed(1)} s)`);
      }
      signal.throwIfAborted();
      await pointCurrentAt(templateDir, request.buildId);

      run.log(n, '[finalize] publishing the template files');
      const artifacts: BuildArtifact[] = [];
      for (const name of Object.values(TEMPLATE_FILES)) {
        signal.throwIfAborted();
        const key = `templates/${request.templateId}/${request.buildId}/${name}`;
        const info =
          earlier && name !== TEMPLATE_FILES.manifest
            ? await this.artifacts
                .copy(`templates/${earlier.build.templateId}/${earlier.build.buildId}/${name}`, key)
                .catch((error: unknown) => {
                  if (!(error instanceof ArtifactNotFoundError)) throw error;
                  return this.artifacts.writeFile(key, join(buildDir, name));
                })
            : await this.artifacts.writeFile(key, join(buildDir, name));
        artifacts.push({ name, bytes: info.bytes, sha256: info.sha256 });
      }
      if (!earlier) await this.recordResult(resultKey, request.templateId, request.buildId);
      run.stepDone(n, Boolean(earlier), top.key, startedAt);
      return {
        artifacts,
        diskMib,
        envdVersion: ENVD_COMPAT_VERSION,
        envs: context.envs,
        workdir: context.workdir ?? '',
        user: context.user,
        startCmd: request.startCmd ?? '',
        readyCmd: request.readyCmd ?? '',
        vcpus: run.vcpus,
        memoryMib: run.memoryMib,
      };
    } catch (error) {
      await rm(staging, { recursive: true, force: true });
      if (placed) {
        await rm(buildDir, { recursive: true, force: true });
        await this.artifacts.removePrefix(`templates/${request.templateId}/${request.buildId}/`).catch(() => undefined);
      }
      throw error;
    }
  }

  private get resultsDir(): string {
    return join(this.layers.root, 'results');
  }

  /** The earlier build recorded under a result key, when it is still on this host with a usable snapshot. */
  private async earlierResult(key: string): Promise<{ build: TemplateBuild; snapshot: TemplateSnapshot; diskMib: number } | undefined> {
    try {
      const pointer = JSON.parse(await readFile(join(this.resultsDir, `${key}.json`), 'utf8')) as { templateId: string; buildId: string };
      // Only a build still on this host: resolving a missing one would fetch it from the artifact store, snapshot-less.
      await stat(join(this.templates.root, pointer.templateId, pointer.buildId, TEMPLATE_FILES.manifest));
      const build = await this.templates.resolve(pointer.templateId, pointer.buildId);
      const manifest = JSON.parse(await readFile(join(build.dir, TEMPLATE_FILES.manifest), 'utf8')) as BuiltTemplateManifest;
      if (!Number.isInteger(manifest.diskMib)) return undefined;
      const snapshot = await this.snapshots.load(build);
      return { build, snapshot, diskMib: manifest.diskMib };
    } catch {
      // No such build any more (deleted, or its snapshot outdated): the result is made again.
      return undefined;
    }
  }

  private async recordResult(key: string, templateId: string, buildId: string): Promise<void> {
    await mkdir(this.resultsDir, { recursive: true });
    const partial = join(this.resultsDir, `.${key}.${randomBytes(4).toString('hex')}`);
    await writeFile(partial, JSON.stringify({ templateId, buildId }));
    await rename(partial, join(this.resultsDir, `${key}.json`));
  }
}

/** Envs in name order: the result key must not depend on the order they were set in. */
function sortedEnvs(envs: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.keys(envs).sort().map((name) => [name, envs[name]]));
}

function describeStep(step: ParsedStep): string {
  switch (step.type) {
    case 'RUN':
      return `RUN ${step.command}${step.user ? ` (as ${step.user})` : ''}`;
    case 'COPY':
      return `COPY ${step.src} ${step.dest}${step.user ? ` (owner ${step.user})` : ''}${step.mode ? ` (mode ${step.mode})` : ''}`;
    case 'ENV':
      return `ENV ${Object.keys(step.envs).join(' ')}`;
    case 'WORKDIR':
      return `WORKDIR ${step.path}`;
    case 'USER':
      return `USER ${step.user}`;
  }
}


/** Re-points `<template>/current` at the build, atomically (a symlink renamed over the old one). */
async function pointCurrentAt(templateDir: string, buildId: string): Promise<void> {
  const temporary = join(templateDir, `.current-${randomBytes(4).toString('hex')}`);
  await symlink(buildId, temporary);
  try {
    await rename(temporary, join(templateDir, 'current'));
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}

