import { posix } from 'node:path';
import { DockerfileError } from './dockerfile.errors';
import { processWord, splitWords, substituteVariables, VariableLookup, WordContext } from './dockerfile-words';
import { shellQuote } from './shell-quote';

/** The instructions Kiln builds; anything else is refused with the line it is on. */
export const SUPPORTED_INSTRUCTIONS = ['FROM', 'RUN', 'COPY', 'ADD', 'ENV', 'ARG', 'WORKDIR', 'USER', 'CMD', 'ENTRYPOINT'] as const;

/** `FROM NAME` (no tag, registry or digest) is a Kiln template; anything with one is an image reference. */
export interface DockerfileBase {
  kind: 'template' | 'image';
  name: string;
  line: number;
}

interface StepCommon {
  line: number;
  /** The instruction as written (whitespace collapsed), for progress and error messages. */
  instruction: string;
}

export type DockerfileStep =
  | (StepCommon & { type: 'RUN'; command: string })
  | (StepCommon & { type: 'COPY'; src: string; dest: string; user?: string; mode?: number })
  | (StepCommon & { type: 'ENV'; envs: Array<[string, string]> })
  | (StepCommon & { type: 'WORKDIR'; path: string })
  | (StepCommon & { type: 'USER'; user: string });

/** A Dockerfile as a Kiln template build: the base, one step per E2B step, and the start command. */
export interface DockerfilePlan {
  base: DockerfileBase;
  steps: DockerfileStep[];
  /** ENTRYPOINT and CMD combined the way Docker combines them, as one shell command; undefined if neither is set. */
  startCmd?: string;
  /** The line of the ENTRYPOINT or CMD the start command came from. */
  startCmdLine?: number;
  /** Things Docker would also only warn about (an unused --build-arg, a CMD a shell-form ENTRYPOINT ignores). */
  warnings: string[];
}

export interface DockerfileParseOptions {
  /** `--build-arg NAME=VALUE`: overrides the default of `ARG NAME`. */
  buildArgs?: Record<string, string>;
  /** Whether a local ADD source is an archive Docker would unpack (by content); names are always checked. */
  isArchive?: (src: string) => boolean;
}

interface LogicalInstruction {
  line: number;
  keyword: string;
  args: string;
}

type CommandForm = { exec: true; argv: string[]; line: number } | { exec: false; shell: string; line: number };

const ARCHIVE_NAME = /\.(tar|tgz|tbz2?|txz|tar\.(gz|bz2|xz|zst))$/i;
const URL_SOURCE = /^([a-z][a-z0-9+.-]*:\/\/|git@)/i;
const VARIABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** A heredoc opener (`<<EOF`, `<<-"EOF"`), not a here-string (`<<<`) or a shift (`1<<2`). */
const HEREDOC = /(^|[^<])<<-?\s*(["']?)[A-Za-z_][A-Za-z0-9_]*\2/;

/**
 * Parses a Dockerfile (https://docs.docker.com/reference/dockerfile/) into a Kiln build plan, or throws a
 * DockerfileError naming the line. Nothing here touches the network, so an unsupported Dockerfile fails before
 * any request is made.
 */
export function parseDockerfile(source: string, options: DockerfileParseOptions = {}): DockerfilePlan {
  return new DockerfileInterpreter(options).run(source);
}

class DockerfileInterpreter {
  private escape = '\\';
  private base: DockerfileBase | undefined;
  /** ARGs declared before FROM: usable in FROM, and as defaults of the same ARG redeclared after it. */
  private readonly globalArgs = new Map<string, string | undefined>();
  /** ARGs declared after FROM: substituted in later instructions and exported to RUN, as Docker does. */
  private readonly stageArgs = new Map<string, string | undefined>();
  private readonly envs = new Map<string, string>();
  private readonly usedBuildArgs = new Set<string>();
  private workdir: string | undefined;
  private cmd: CommandForm | undefined;
  private entrypoint: CommandForm | undefined;
  private readonly steps: DockerfileStep[] = [];
  private readonly warnings: string[] = [];

  constructor(private readonly options: DockerfileParseOptions) {}

  run(source: string): DockerfilePlan {
    const instructions = this.read(source);
    for (const instruction of instructions) this.apply(instruction);
    if (!this.base) throw new DockerfileError(instructions.at(-1)?.line ?? 1, 'no FROM instruction: a Dockerfile starts FROM a template or an image');
    for (const name of Object.keys(this.options.buildArgs ?? {})) {
      if (!this.usedBuildArgs.has(name)) this.warnings.push(`--build-arg ${name} is not used by any ARG`);
    }
    const start = this.startCommand();
    return {
      base: this.base,
      steps: this.steps,
      startCmd: start?.command,
      startCmdLine: start?.line,
      warnings: this.warnings,
    };
  }

  /** Logical instructions: parser directives read, comments dropped, continuation lines joined. */
  private read(source: string): LogicalInstruction[] {
    const lines = source.replace(/^\uFEFF/, '').replace(/\r\n?/g, '\n').split('\n');
    let i = 0;
    // Parser directives (`# syntax=…`, `# escape=…`, `# check=…`) are only recognised before anything else.
    for (; i < lines.length; i++) {
      const directive = /^\s*#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$/.exec(lines[i]);
      if (!directive) break;
      const key = directive[1].toLowerCase();
      if (key === 'escape') {
        if (directive[2] !== '\\' && directive[2] !== '`') {
          throw new DockerfileError(i + 1, `invalid escape directive ${JSON.stringify(directive[2])}: use \\ or \``);
        }
        this.escape = directive[2];
      } else if (key !== 'syntax' && key !== 'check') {
        break;
      }
    }
    const continuation = new RegExp(`${this.escape === '\\' ? '\\\\' : '`'}[ \\t]*$`);
    const skippable = (line: string) => /^\s*(#.*)?$/.test(line);
    const result: LogicalInstruction[] = [];
    while (i < lines.length) {
      if (skippable(lines[i])) {
        i++;
        continue;
      }
      const line = i + 1;
      let text = '';
      for (;;) {
        const current = lines[i++];
        if (!continuation.test(current)) {
          text += current;
          break;
        }
        text += current.replace(continuation, '');
        // Comment and empty lines inside a continued instruction are removed, as Docker does.
        while (i < lines.length && skippable(lines[i])) i++;
        if (i >= lines.length) break;
      }
      const match = /^\s*(\S+)(?:\s+([\s\S]*))?$/.exec(text)!;
      result.push({ line, keyword: match[1].toUpperCase(), args: (match[2] ?? '').trim() });
    }
    return result;
  }

  private apply(instruction: LogicalInstruction): void {
    const { keyword, line } = instruction;
    if (!(SUPPORTED_INSTRUCTIONS as readonly string[]).includes(keyword)) {
      throw new DockerfileError(line, `instruction ${keyword} is not supported by Kiln (supported: ${SUPPORTED_INSTRUCTIONS.join(', ')})`);
    }
    if (!this.base && keyword !== 'FROM' && keyword !== 'ARG') {
      throw new DockerfileError(line, `${keyword} before FROM: only ARG may come before the FROM instruction`);
    }
    switch (keyword) {
      case 'FROM':
        return this.from(instruction);
      case 'ARG':
        return this.arg(instruction);
      case 'RUN':
        return this.runStep(instruction);
      case 'COPY':
      case 'ADD':
        return this.copy(instruction);
      case 'ENV':
        return this.env(instruction);
      case 'WORKDIR':
        return this.setWorkdir(instruction);
      case 'USER':
        return this.user(instruction);
      case 'CMD':
      case 'ENTRYPOINT':
        return this.command(instruction);
    }
  }

  private from(instruction: LogicalInstruction): void {
    const { line } = instruction;
    if (this.base) throw new DockerfileError(line, 'a second FROM: multi-stage builds are not supported by Kiln');
    const { rest } = this.flags(instruction, []);
    const words = splitWords(rest, this.context(line, (name) => this.globalArgs.get(name)));
    if (words.length === 3 && words[1].toUpperCase() === 'AS') {
      throw new DockerfileError(line, `FROM … AS ${words[2]}: multi-stage builds are not supported by Kiln`);
    }
    if (words.length !== 1) throw new DockerfileError(line, 'FROM takes one template or image name');
    const name = words[0];
    if (name.toLowerCase() === 'scratch') {
      throw new DockerfileError(line, 'FROM scratch is not supported: start FROM a template (base) or an image (debian:bookworm)');
    }
    const isImage = /[:/@]/.test(name);
    this.base = { kind: isImage ? 'image' : 'template', name, line };
  }

  private arg(instruction: LogicalInstruction): void {
    const { line } = instruction;
    const words = splitWords(instruction.args, this.context(line, this.lookup()));
    if (words.length === 0) throw new DockerfileError(line, 'ARG needs a name');
    const buildArgs = this.options.buildArgs ?? {};
    for (const word of words) {
      const eq = word.indexOf('=');
      const name = eq < 0 ? word : word.slice(0, eq);
      if (!VARIABLE_NAME.test(name)) throw new DockerfileError(line, `invalid ARG name ${JSON.stringify(name)}`);
      let value = eq < 0 ? undefined : word.slice(eq + 1);
      if (Object.prototype.hasOwnProperty.call(buildArgs, name)) {
        value = buildArgs[name];
        this.usedBuildArgs.add(name);
      }
      if (!this.base) {
        this.globalArgs.set(name, value);
      } else {
        this.stageArgs.set(name, value ?? this.globalArgs.get(name));
      }
    }
  }

  private runStep(instruction: LogicalInstruction): void {
    const { line } = instruction;
    const { rest } = this.flags(instruction, []);
    if (!rest) throw new DockerfileError(line, 'RUN needs a command');
    const argv = jsonArray(rest);
    if (!argv && HEREDOC.test(rest)) {
      throw new DockerfileError(line, 'heredocs (<<EOF) are not supported by Kiln: write the command on continued lines');
    }
    const command = argv ? argv.map(shellQuote).join(' ') : rest;
    if (!command.trim()) throw new DockerfileError(line, 'RUN needs a command');
    // Docker gives RUN the ARGs in scope as environment variables (an ENV of the same name wins).
    const exported = [...this.stageArgs].filter((entry): entry is [string, string] => entry[1] !== undefined && !this.envs.has(entry[0]));
    const prefix = exported.length ? `export ${exported.map(([name, value]) => `${name}=${shellQuote(value)}`).join(' ')}; ` : '';
    this.steps.push({ type: 'RUN', line, instruction: display(instruction), command: prefix + command });
  }

  private copy(instruction: LogicalInstruction): void {
    const { line, keyword } = instruction;
    const { flags, rest } = this.flags(instruction, ['chown', 'chmod']);
    const context = this.context(line, this.lookup());
    const json = jsonArray(rest);
    if (!json && HEREDOC.test(rest)) {
      throw new DockerfileError(line, `heredocs (<<EOF) are not supported by Kiln in ${keyword}: put the file in the build context`);
    }
    const parts = json ? json.map((part) => substituteVariables(part, context)) : splitWords(rest, context);
    if (parts.length < 2) throw new DockerfileError(line, `${keyword} needs at least one source and a destination`);
    const sources = parts.slice(0, -1);
    let dest = parts[parts.length - 1];
    if (sources.length > 1 && !dest.endsWith('/')) {
      throw new DockerfileError(line, `${keyword} with several sources needs a destination directory ending in /`);
    }
    let user: string | undefined;
    if (flags.chown !== undefined) {
      const [owner, group] = flags.chown.split(':');
      if (!owner) throw new DockerfileError(line, `${keyword} --chown needs a user`);
      if (group !== undefined && group !== owner) {
        throw new DockerfileError(line, `${keyword} --chown=${flags.chown}: a group is not supported by Kiln (use --chown=${owner})`);
      }
      user = owner;
    }
    let mode: number | undefined;
    if (flags.chmod !== undefined) {
      if (!/^[0-7]{3,4}$/.test(flags.chmod)) {
        throw new DockerfileError(line, `${keyword} --chmod=${flags.chmod}: only octal modes (0755) are supported by Kiln`);
      }
      mode = parseInt(flags.chmod, 8);
    }
    // A relative destination is relative to WORKDIR; `.` means the directory itself.
    if (/(^|\/)\.$/.test(dest)) dest += '/';
    if (!dest.startsWith('/') && this.workdir) {
      const joined = posix.join(this.workdir, dest);
      dest = dest.endsWith('/') && !joined.endsWith('/') ? `${joined}/` : joined;
    }
    for (const source of sources) {
      if (URL_SOURCE.test(source)) {
        throw new DockerfileError(line, `${keyword} from a URL (${source}) is not supported by Kiln: only files from the build context`);
      }
      // Sources are relative to the build context even when written with a leading slash.
      const src = posix.normalize(source.replace(/^\/+/, '') || '.').replace(/(.)\/+$/, '$1');
      if (src === '..' || src.startsWith('../')) {
        throw new DockerfileError(line, `${keyword} source ${source} is outside the build context`);
      }
      if (keyword === 'ADD' && (ARCHIVE_NAME.test(src) || this.options.isArchive?.(src))) {
        throw new DockerfileError(line, `ADD ${source}: Docker would unpack this archive, which Kiln does not do (use COPY, then RUN tar)`);
      }
      this.steps.push({ type: 'COPY', line, instruction: display(instruction), src, dest, user, mode });
    }
  }

  private env(instruction: LogicalInstruction): void {
    const { line } = instruction;
    const context = this.context(line, this.lookup());
    const words = splitWords(instruction.args, context);
    if (words.length === 0) throw new DockerfileError(line, 'ENV needs NAME=value');
    const envs: Array<[string, string]> = [];
    if (words[0].includes('=')) {
      for (const word of words) {
        const eq = word.indexOf('=');
        if (eq <= 0) throw new DockerfileError(line, `ENV ${word}: expected NAME=value (one form per ENV instruction)`);
        envs.push([word.slice(0, eq), word.slice(eq + 1)]);
      }
    } else {
      // The legacy form: `ENV NAME the rest of the line`.
      const legacy = /^(\S+)\s+([\s\S]+)$/.exec(instruction.args);
      if (!legacy) throw new DockerfileError(line, `ENV ${words[0]} needs a value (ENV NAME=value or ENV NAME value)`);
      envs.push([words[0], processWord(legacy[2], context)]);
    }
    for (const [name, value] of envs) this.envs.set(name, value);
    this.steps.push({ type: 'ENV', line, instruction: display(instruction), envs });
  }

  private setWorkdir(instruction: LogicalInstruction): void {
    const { line } = instruction;
    let path = processWord(instruction.args, this.context(line, this.lookup()));
    if (!path) throw new DockerfileError(line, 'WORKDIR needs a path');
    if (!path.startsWith('/') && this.workdir) path = posix.join(this.workdir, path);
    this.workdir = path.startsWith('/') ? path : undefined;
    this.steps.push({ type: 'WORKDIR', line, instruction: display(instruction), path });
  }

  private user(instruction: LogicalInstruction): void {
    const { line } = instruction;
    const user = processWord(instruction.args, this.context(line, this.lookup()));
    if (!user) throw new DockerfileError(line, 'USER needs a user name');
    if (user.includes(':')) throw new DockerfileError(line, `USER ${user}: a group is not supported by Kiln (USER name)`);
    this.steps.push({ type: 'USER', line, instruction: display(instruction), user });
  }

  private command(instruction: LogicalInstruction): void {
    const { line, keyword, args } = instruction;
    if (!args) throw new DockerfileError(line, `${keyword} needs a command`);
    const argv = jsonArray(args);
    const form: CommandForm = argv ? { exec: true, argv, line } : { exec: false, shell: args, line };
    if (keyword === 'CMD') this.cmd = form;
    else this.entrypoint = form;
  }

  /** ENTRYPOINT and CMD as Docker combines them, written as one shell command (Kiln runs it with a shell). */
  private startCommand(): { command: string; line: number } | undefined {
    const { entrypoint, cmd } = this;
    const argvOf = (form: CommandForm) => (form.exec ? form.argv : ['/bin/sh', '-c', form.shell]);
    let argv: string[];
    let line: number;
    if (entrypoint && !entrypoint.exec) {
      if (cmd) this.warnings.push(`Dockerfile:${cmd.line}: CMD is ignored: a shell-form ENTRYPOINT does not take arguments`);
      return { command: entrypoint.shell, line: entrypoint.line };
    } else if (entrypoint?.exec) {
      argv = [...entrypoint.argv, ...(cmd ? argvOf(cmd) : [])];
      line = entrypoint.line;
    } else if (cmd) {
      if (!cmd.exec) return { command: cmd.shell, line: cmd.line };
      argv = cmd.argv;
      line = cmd.line;
    } else {
      return undefined;
    }
    return argv.length ? { command: argv.map(shellQuote).join(' '), line } : undefined;
  }

  /** Leading `--name=value` flags of FROM, RUN, COPY and ADD; those Kiln does not support are refused. */
  private flags(instruction: LogicalInstruction, allowed: string[]): { flags: Record<string, string>; rest: string } {
    const { keyword, line } = instruction;
    const flags: Record<string, string> = {};
    let rest = instruction.args;
    for (;;) {
      const match = /^--([A-Za-z][A-Za-z0-9-]*)(?:=(\S*))?(?:\s+|$)/.exec(rest);
      if (!match) break;
      const name = match[1].toLowerCase();
      if (!allowed.includes(name)) {
        const why = name === 'from' ? ' (multi-stage builds are not supported)' : '';
        const supported = allowed.length ? `supported: ${allowed.map((flag) => `--${flag}`).join(', ')}` : 'it takes no flags';
        throw new DockerfileError(line, `${keyword} --${name} is not supported by Kiln${why} (${supported})`);
      }
      flags[name] = processWord(match[2] ?? '', this.context(line, this.lookup()));
      rest = rest.slice(match[0].length);
    }
    return { flags, rest: rest.trim() };
  }

  /** Variables as a later instruction sees them: ENV wins over ARG; before FROM only global ARGs exist. */
  private lookup(): VariableLookup {
    if (!this.base) return (name) => this.globalArgs.get(name);
    return (name) => this.envs.get(name) ?? this.stageArgs.get(name);
  }

  private context(line: number, lookup: VariableLookup | null): WordContext {
    return { escape: this.escape, lookup, line };
  }
}

/** The exec (JSON) form of RUN, CMD, ENTRYPOINT, COPY and ADD; anything that is not a JSON string array is shell form. */
function jsonArray(args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined;
  try {
    const parsed: unknown = JSON.parse(args);
    return Array.isArray(parsed) && parsed.every((item) => typeof item === 'string') ? (parsed as string[]) : undefined;
  } catch {
    return undefined;
  }
}

function display(instruction: LogicalInstruction): string {
  return `${instruction.keyword} ${instruction.args.replace(/\s+/g, ' ')}`.trim();
}
