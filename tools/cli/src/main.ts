import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { HELP_TEXT, parseCliArgs } from './args/cli-args';
import { CliUsageError, ConnectionConfigError, TemplateFileError } from './cli.errors';
import { devEnvFile, resolveConnection } from './connection';
import { EXIT_BUILD_FAILED, EXIT_USAGE, runTemplateBuild, type CommandIo } from './template/template-build.command';

/** The repository root: this file runs from tools/cli/src (tests) or tools/cli/dist (the bin). */
const REPO_ROOT = join(__dirname, '..', '..', '..');

export interface KilnIo extends CommandIo {
  env: Record<string, string | undefined>;
}

/** Runs `kiln …` and returns the exit code; nothing here exits the process, so tests can drive it. */
export async function main(argv: string[], io: KilnIo): Promise<number> {
  try {
    const command = parseCliArgs(argv, io.env);
    switch (command.kind) {
      case 'help':
        io.stdout.write(HELP_TEXT[command.topic]);
        return 0;
      case 'version': {
        const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
        io.stdout.write(`kiln ${pkg.version}\n`);
        return 0;
      }
      case 'template-build': {
        const connection = resolveConnection(io.env, devEnvFile(io.env, REPO_ROOT));
        return await runTemplateBuild(command.options, connection, io);
      }
    }
  } catch (error) {
    if (error instanceof CliUsageError) {
      io.stderr.write(`kiln: ${error.message}\nSee '${error.helpCommand}'.\n`);
      return EXIT_USAGE;
    }
    if (error instanceof TemplateFileError || error instanceof ConnectionConfigError) {
      io.stderr.write(`kiln: ${error.message}\n`);
      return error instanceof TemplateFileError ? EXIT_USAGE : EXIT_BUILD_FAILED;
    }
    io.stderr.write(`kiln: ${(error as Error).stack ?? error}\n`);
    return EXIT_BUILD_FAILED;
  }
}

/** The bin's entry: process arguments, streams and environment; Ctrl-C stops waiting for the build. */
export function runFromCommandLine(): void {
  const interrupt = new AbortController();
  process.once('SIGINT', () => interrupt.abort());
  main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, cwd: process.cwd(), env: process.env, signal: interrupt.signal }).then(
    (code) => {
      process.exitCode = code;
    },
  );
}
