import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { LogEntryEnd, LogEntryStart, Template, type LogEntry, type TemplateClass } from 'e2b';
import type { TemplateBuildOptions } from '../args/cli-args';
import { CliUsageError, ConnectionConfigError } from '../cli.errors';
import type { KilnConnection } from '../connection';
import { DockerfileError } from '../dockerfile/dockerfile.errors';
import { parseDockerfile } from '../dockerfile/dockerfile-parser';
import { BuildProgress, type ProgressOutput } from '../progress/build-progress';
import { stepLabelsOfDockerfile, stepLabelsOfTemplate, type StepLabels } from './build-steps';
import { templateFromDockerfile } from './dockerfile-template';
import { isTemplateModule, loadTemplateModule } from './template-module-loader';

export interface CommandIo {
  stdout: ProgressOutput;
  stderr: { write(chunk: string): unknown };
  cwd: string;
  /** Aborts the build wait (Ctrl-C). */
  signal?: AbortSignal;
}

/** Exit codes: 0 built, 1 the build failed, 2 the command line or the Dockerfile is wrong. */
export const EXIT_BUILT = 0;
export const EXIT_BUILD_FAILED = 1;
export const EXIT_USAGE = 2;

const BUILD_IDS = /Template created with ID: (\S+), Build ID: (\S+)/;

/**
 * `kiln template build`: turns the file into an SDK Template (Dockerfiles through Kiln's own parser, before any
 * request), then runs the SDK's Template.build against the configured API with a progress display.
 */
export async function runTemplateBuild(options: TemplateBuildOptions, connection: KilnConnection, io: CommandIo): Promise<number> {
  const file = resolve(io.cwd, options.file);
  if (!existsSync(file) || !statSync(file).isFile()) throw new CliUsageError(`no such file: ${options.file}`, 'kiln template build --help');
  const shownFile = relative(io.cwd, file) || basename(file);

  let template: TemplateClass;
  let labels: StepLabels;
  if (isTemplateModule(file)) {
    if (options.context !== undefined) {
      throw new CliUsageError('--context is for Dockerfiles: a template file sets Template({ fileContextPath })', 'kiln template build --help');
    }
    if (Object.keys(options.buildArgs).length) throw new CliUsageError('--build-arg is for Dockerfiles', 'kiln template build --help');
    template = await loadTemplateModule(file, shownFile);
    if (options.readyCmd !== undefined) template = (template as unknown as { setReadyCmd(cmd: string): TemplateClass }).setReadyCmd(options.readyCmd);
    labels = await stepLabelsOfTemplate(template);
  } else {
    const contextDir = resolve(io.cwd, options.context ?? dirname(file));
    if (!existsSync(contextDir) || !statSync(contextDir).isDirectory()) throw new CliUsageError(`no such context directory: ${contextDir}`, 'kiln template build --help');
    let plan;
    try {
      plan = parseDockerfile(readFileSync(file, 'utf8'), { buildArgs: options.buildArgs, isArchive: (src) => isArchiveFile(join(contextDir, src)) });
    } catch (error) {
      if (error instanceof DockerfileError) {
        io.stderr.write(`${error.inFile(shownFile).message}\n`);
        return EXIT_USAGE;
      }
      throw error;
    }
    for (const warning of plan.warnings) io.stderr.write(`warning: ${warning}\n`);
    for (const step of plan.steps) {
      if (step.type === 'COPY' && !/[*?[]/.test(step.src) && !existsSync(join(contextDir, step.src))) {
        io.stderr.write(`${shownFile}:${step.line}: COPY source ${step.src} does not exist in the build context ${contextDir}\n`);
        return EXIT_USAGE;
      }
    }
    template = templateFromDockerfile(plan, contextDir, options.readyCmd);
    labels = stepLabelsOfDockerfile(plan, shownFile, options.readyCmd);
  }

  if (!connection.apiKey) {
    throw new ConnectionConfigError('no API key: set E2B_API_KEY (and E2B_API_URL or E2B_DOMAIN), or start the dev stack with `npm run up`, which writes .kiln/dev.env');
  }

  const live = options.progress === 'tty' || (options.progress === 'auto' && Boolean(io.stdout.isTTY));
  const progress = new BuildProgress(options.name, labels, io.stdout, live);
  let ids: { templateId: string; buildId: string } | undefined;
  const onBuildLogs = (entry: LogEntry) => {
    const found = BUILD_IDS.exec(entry.message);
    if (found) ids = { templateId: found[1], buildId: found[2] };
    // The SDK's start/end markers carry no news for a reader.
    if (entry instanceof LogEntryStart || entry instanceof LogEntryEnd) return;
    progress.log(entry);
  };
  const connectionOpts = { apiKey: connection.apiKey, apiUrl: connection.apiUrl, domain: connection.domain };

  try {
    const info = await Template.build(template, options.name, {
      ...connectionOpts,
      cpuCount: options.cpuCount,
      memoryMB: options.memoryMB,
      skipCache: options.skipCache,
      tags: options.tags.length ? options.tags : undefined,
      onBuildLogs,
      signal: io.signal,
    });
    progress.succeed();
    const tags = info.tags?.length ? ` tags ${info.tags.join(', ')}` : '';
    io.stdout.write(`Built ${info.name} (template ${info.templateId}, build ${info.buildId}${tags}) in ${progress.elapsedSeconds.toFixed(1)}s\n`);
    return EXIT_BUILT;
  } catch (error) {
    if (io.signal?.aborted) {
      progress.stop();
      io.stderr.write(`kiln: interrupted; the build ${ids ? `${ids.buildId} of template ${ids.templateId} ` : ''}may still be running on the server\n`);
      return 130;
    }
    // The failing step is in the build status (reason.step), which the SDK's BuildError does not carry.
    let step: number | undefined;
    if (ids && (error as Error).name === 'BuildError') {
      const status = await Template.getBuildStatus(ids, connectionOpts).catch(() => undefined);
      if (status?.reason?.step !== undefined && /^\d+$/.test(status.reason.step)) step = Number(status.reason.step);
    }
    // A definition the API refused names its step in the message ("step 3 (COPY): …").
    const named = /\bstep (\d+)\b/i.exec((error as Error).message ?? '');
    if (step === undefined && named && Number(named[1]) < labels.length) step = Number(named[1]);
    progress.fail(step);
    io.stderr.write(`${failureMessage(options.name, error as Error, step, labels, connection)}\n`);
    return EXIT_BUILD_FAILED;
  }
}

function failureMessage(name: string, error: Error, step: number | undefined, labels: StepLabels, connection: KilnConnection): string {
  const message = error.message || String(error);
  if (step !== undefined) {
    return `kiln: build of ${name} failed at step ${step}: ${labels[step] ?? '(unknown step)'}\n  ${message.replace(/\n/g, '\n  ')}`;
  }
  const cause = (error as { cause?: { code?: string } }).cause;
  if (cause?.code === 'ECONNREFUSED' || /fetch failed/i.test(message)) {
    return `kiln: cannot reach the API at ${connection.apiUrl ?? `https://api.${connection.domain ?? 'e2b.app'}`} (settings from ${connection.sources.join(' + ') || 'defaults'}): ${message}`;
  }
  return `kiln: build of ${name} failed: ${message}`;
}

/** Whether a context file is a tar archive, plain or compressed (gzip, bzip2, xz), which Docker's ADD would unpack. */
function isArchiveFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    const fd = openSync(path, 'r');
    try {
      const head = Buffer.alloc(512);
      const read = readSync(fd, head, 0, 512, 0);
      const bytes = head.subarray(0, read);
      if (bytes[0] === 0x1f && bytes[1] === 0x8b) return true;
      if (bytes.subarray(0, 3).toString('latin1') === 'BZh') return true;
      if (bytes.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return true;
      return read >= 262 && bytes.subarray(257, 262).toString('latin1') === 'ustar';
    } finally {
      closeSync(fd);
    }
  } catch {
    return false;
  }
}
