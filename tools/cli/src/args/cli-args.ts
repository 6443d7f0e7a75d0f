import { CliUsageError } from '../cli.errors';

export type ProgressMode = 'auto' | 'tty' | 'plain';

export interface TemplateBuildOptions {
  /** A Dockerfile, or a template module (.ts, .mts, .mjs, .js, .cjs) whose default (or `template`) export is a Template. */
  file: string;
  /** `name` or `name:tag`. */
  name: string;
  /** The build context of a Dockerfile (default: the Dockerfile's directory). */
  context?: string;
  cpuCount?: number;
  memoryMB?: number;
  skipCache: boolean;
  tags: string[];
  buildArgs: Record<string, string>;
  readyCmd?: string;
  progress: ProgressMode;
}

export type CliCommand =
  | { kind: 'help'; topic: HelpTopic }
  | { kind: 'version' }
  | { kind: 'template-build'; options: TemplateBuildOptions };

export type HelpTopic = 'kiln' | 'template' | 'template build';

const TEMPLATE_BUILD_HELP = 'kiln template build --help';

/** The options `template build` takes; `true` marks those that need a value. */
const BUILD_OPTIONS: Record<string, { takesValue: boolean; canonical: string }> = {
  '-f': { takesValue: true, canonical: 'file' },
  '--file': { takesValue: true, canonical: 'file' },
  '-n': { takesValue: true, canonical: 'name' },
  '--name': { takesValue: true, canonical: 'name' },
  '--context': { takesValue: true, canonical: 'context' },
  '--cpu': { takesValue: true, canonical: 'cpu' },
  '--memory': { takesValue: true, canonical: 'memory' },
  '--skip-cache': { takesValue: false, canonical: 'skip-cache' },
  '--tag': { takesValue: true, canonical: 'tag' },
  '-t': { takesValue: true, canonical: 'tag' },
  '--build-arg': { takesValue: true, canonical: 'build-arg' },
  '--ready-cmd': { takesValue: true, canonical: 'ready-cmd' },
  '--progress': { takesValue: true, canonical: 'progress' },
  '--plain': { takesValue: false, canonical: 'plain' },
  '-h': { takesValue: false, canonical: 'help' },
  '--help': { takesValue: false, canonical: 'help' },
};

/**
 * Reads `kiln …` arguments (without `node` and the script). `env` resolves `--build-arg NAME` without a value, as
 * Docker does.
 */
export function parseCliArgs(argv: string[], env: Record<string, string | undefined> = {}): CliCommand {
  // `npx kiln -- …` passes the separator through.
  const [first, second, ...rest] = argv[0] === '--' ? argv.slice(1) : argv;
  if (first === undefined || first === '-h' || first === '--help' || first === 'help') {
    return { kind: 'help', topic: first === 'help' && second === 'template' ? (rest[0] === 'build' ? 'template build' : 'template') : 'kiln' };
  }
  if (first === '--version' || first === '-V') return { kind: 'version' };
  if (first !== 'template') throw new CliUsageError(`unknown command ${JSON.stringify(first)}`);
  if (second === undefined || second === '-h' || second === '--help') return { kind: 'help', topic: 'template' };
  if (second !== 'build') throw new CliUsageError(`unknown command "template ${second}"`, 'kiln template --help');
  return parseTemplateBuild(rest, env);
}

function parseTemplateBuild(argv: string[], env: Record<string, string | undefined>): CliCommand {
  const values = new Map<string, string[]>();
  const flags = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const key = eq > 0 ? arg.slice(0, eq) : arg;
    const spec = BUILD_OPTIONS[key];
    if (!spec) {
      throw new CliUsageError(
        arg.startsWith('-') ? `unknown option ${key}` : `unexpected argument ${JSON.stringify(arg)}`,
        TEMPLATE_BUILD_HELP,
      );
    }
    if (spec.canonical === 'help') return { kind: 'help', topic: 'template build' };
    if (!spec.takesValue) {
      if (eq > 0) throw new CliUsageError(`${key} takes no value`, TEMPLATE_BUILD_HELP);
      flags.add(spec.canonical);
      continue;
    }
    let value: string;
    if (eq > 0) {
      value = arg.slice(eq + 1);
    } else {
      if (i + 1 >= argv.length) throw new CliUsageError(`${key} needs a value`, TEMPLATE_BUILD_HELP);
      value = argv[++i];
    }
    values.set(spec.canonical, [...(values.get(spec.canonical) ?? []), value]);
  }

  const single = (name: string): string | undefined => {
    const list = values.get(name);
    if (list && list.length > 1) throw new CliUsageError(`--${name} given more than once`, TEMPLATE_BUILD_HELP);
    return list?.[0];
  };
  const file = single('file');
  const name = single('name');
  if (!file) throw new CliUsageError('-f/--file is required (a Dockerfile or a template.ts/.mjs/.js)', TEMPLATE_BUILD_HELP);
  if (!name) throw new CliUsageError('-n/--name is required (the template name, optionally name:tag)', TEMPLATE_BUILD_HELP);
  // The gateway checks names in full; only what cannot be a name at all is refused here.
  if (/\s/.test(name) || name.startsWith(':') || name.endsWith(':')) {
    throw new CliUsageError(`invalid template name ${JSON.stringify(name)}: NAME or NAME:TAG`, TEMPLATE_BUILD_HELP);
  }

  const buildArgs: Record<string, string> = {};
  for (const buildArg of values.get('build-arg') ?? []) {
    const eq = buildArg.indexOf('=');
    const argName = eq < 0 ? buildArg : buildArg.slice(0, eq);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(argName)) throw new CliUsageError(`invalid --build-arg ${JSON.stringify(buildArg)}: NAME=VALUE`, TEMPLATE_BUILD_HELP);
    // `--build-arg NAME` takes the value from the environment, and is ignored when it is not set there (as Docker does).
    const value = eq < 0 ? env[argName] : buildArg.slice(eq + 1);
    if (value !== undefined) buildArgs[argName] = value;
  }

  const tags = values.get('tag') ?? [];
  for (const tag of tags) {
    if (!/^[A-Za-z0-9._-]+$/.test(tag)) throw new CliUsageError(`invalid --tag ${JSON.stringify(tag)}`, TEMPLATE_BUILD_HELP);
  }

  const progressValue = single('progress');
  if (progressValue !== undefined && !['auto', 'tty', 'plain'].includes(progressValue)) {
    throw new CliUsageError(`--progress must be auto, tty or plain (got ${JSON.stringify(progressValue)})`, TEMPLATE_BUILD_HELP);
  }
  const progress: ProgressMode = flags.has('plain') ? 'plain' : ((progressValue as ProgressMode | undefined) ?? 'auto');

  const readyCmd = single('ready-cmd');
  if (readyCmd !== undefined && !readyCmd.trim()) throw new CliUsageError('--ready-cmd needs a command', TEMPLATE_BUILD_HELP);

  return {
    kind: 'template-build',
    options: {
      file,
      name,
      context: single('context'),
      cpuCount: positiveInteger(single('cpu'), '--cpu', 1, 64),
      memoryMB: positiveInteger(single('memory'), '--memory', 128, 1024 * 1024),
      skipCache: flags.has('skip-cache'),
      tags,
      buildArgs,
      readyCmd,
      progress,
    },
  };
}

function positiveInteger(value: string | undefined, option: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new CliUsageError(`${option} must be a whole number from ${min} to ${max} (got ${JSON.stringify(value)})`, TEMPLATE_BUILD_HELP);
  }
  return Number(value);
}

export const HELP_TEXT: Record<HelpTopic, string> = {
  kiln: `kiln: command line for a Kiln (E2B-compatible) deployment

Usage:
  kiln template build -f FILE -n NAME [options]   build a template from a Dockerfile or a template.ts/.mjs/.js
  kiln --help | kiln template build --help

Connection (as the e2b SDK): E2B_API_KEY, and E2B_API_URL or E2B_DOMAIN. Any of them that is unset is read from
the dev stack's .kiln/dev.env (written by \`npm run up\`; $KILN_STATE/dev.env when KILN_STATE is set).
`,
  template: `Usage:
  kiln template build -f FILE -n NAME [options]   build a template (kiln template build --help)
`,
  'template build': `Usage: kiln template build -f FILE -n NAME [options]

Builds a template on Kiln through the e2b SDK's Template.build and waits for it, showing each step.

  -f, --file FILE        a Dockerfile, or a template module (.ts, .mts, .mjs, .js, .cjs) whose default export (or
                         export named \`template\`) is an e2b Template()
  -n, --name NAME        the template name, optionally NAME:TAG
      --context DIR      the build context COPY/ADD read from (Dockerfile only; default: the Dockerfile's directory)
      --cpu N            vCPUs of the template's sandboxes (default 2)
      --memory MiB       memory of the template's sandboxes (default 1024)
      --skip-cache       rebuild every step, whatever the cache holds
  -t, --tag TAG          also tag the build TAG (repeatable)
      --build-arg K=V    value of ARG K (repeatable; --build-arg K takes $K)
      --ready-cmd CMD    command that must exit 0 before the template's snapshot is taken (default: none)
      --progress MODE    auto (live display on a terminal), tty or plain (streamed log lines); --plain = plain

Dockerfile support: FROM, RUN, COPY, ADD (local files, no archives or URLs), ENV, ARG, WORKDIR, USER, CMD and
ENTRYPOINT (the start command, combined as Docker does). FROM NAME without a tag, registry or digest is the Kiln
template NAME (for example base); FROM with one (debian:bookworm, ubuntu:24.04, 127.0.0.1:5000/app:1) is an image.
Multi-stage builds, heredocs and other instructions are refused before anything is sent.

Exit status: 0 built, 1 the build failed (the failing step is named), 2 bad arguments or Dockerfile.
`,
};
