import { DockerfileError } from './dockerfile.errors';

/** A variable's value as the Dockerfile defined it so far (ARG or ENV), or undefined when it is unknown here. */
export type VariableLookup = (name: string) => string | undefined;

export interface WordContext {
  /** The escape character (`\` or the one a `# escape=` directive chose). */
  escape: string;
  /** Variables to substitute; null for instructions Docker does not substitute in. */
  lookup: VariableLookup | null;
  /** The instruction's line, for errors. */
  line: number;
}

const NAME_START = /[A-Za-z_]/;
const NAME_CHAR = /[A-Za-z0-9_]/;

/**
 * Docker's word processing for the instructions that take words (FROM, COPY/ADD, ENV, ARG, WORKDIR, USER):
 * whitespace separates words, single quotes are literal, double quotes keep whitespace and allow `$`, the escape
 * character makes the next character literal, and `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME:+word}` (and the
 * forms without `:`) are replaced. A variable the Dockerfile never defined may still come from the base template's
 * environment, which is not known here, so its reference is kept as written (the build resolves it) rather than
 * silently replaced by an empty string.
 */
export function splitWords(text: string, context: WordContext): string[] {
  return new WordScanner(text, context).words();
}

/** The whole text as one word: quotes removed, escapes and variables resolved, inner whitespace kept. */
export function processWord(text: string, context: WordContext): string {
  return new WordScanner(text.trim(), context).single();
}

/** Variables and escaped `$` only, quotes being data (the strings of a JSON-form COPY). */
export function substituteVariables(text: string, context: WordContext): string {
  return new WordScanner(text, context).substitutionsOnly();
}

class WordScanner {
  private pos = 0;

  constructor(
    private readonly text: string,
    private readonly context: WordContext,
  ) {}

  words(): string[] {
    const result: string[] = [];
    for (;;) {
      while (this.pos < this.text.length && /\s/.test(this.text[this.pos])) this.pos++;
      if (this.pos >= this.text.length) return result;
      result.push(this.word(true));
    }
  }

  single(): string {
    return this.word(false);
  }

  substitutionsOnly(): string {
    let out = '';
    while (this.pos < this.text.length) {
      const ch = this.text[this.pos];
      if (ch === this.context.escape && this.text[this.pos + 1] === '$') {
        out += '$';
        this.pos += 2;
      } else if (ch === '$') {
        out += this.variable();
      } else {
        out += ch;
        this.pos++;
      }
    }
    return out;
  }

  /** One word; with stopAtSpace false, runs to the end of the text (and `}` never ends it). */
  private word(stopAtSpace: boolean, stopAtBrace = false): string {
    let out = '';
    const { escape } = this.context;
    while (this.pos < this.text.length) {
      const ch = this.text[this.pos];
      if (stopAtSpace && /\s/.test(ch)) break;
      if (stopAtBrace && ch === '}') break;
      if (ch === escape) {
        if (this.pos + 1 < this.text.length) {
          out += this.text[this.pos + 1];
          this.pos += 2;
        } else {
          out += ch;
          this.pos++;
        }
      } else if (ch === "'") {
        out += this.singleQuoted();
      } else if (ch === '"') {
        out += this.doubleQuoted();
      } else if (ch === '$') {
        out += this.variable();
      } else {
        out += ch;
        this.pos++;
      }
    }
    return out;
  }

  private singleQuoted(): string {
    const end = this.text.indexOf("'", this.pos + 1);
    if (end < 0) throw new DockerfileError(this.context.line, 'unterminated single quote');
    const value = this.text.slice(this.pos + 1, end);
    this.pos = end + 1;
    return value;
  }

  private doubleQuoted(): string {
    const { escape } = this.context;
    let out = '';
    this.pos++;
    while (this.pos < this.text.length) {
      const ch = this.text[this.pos];
      if (ch === '"') {
        this.pos++;
        return out;
      }
      if (ch === escape && this.pos + 1 < this.text.length) {
        const next = this.text[this.pos + 1];
        // Inside double quotes the escape character only escapes `"`, `$` and itself, as in a shell.
        out += next === '"' || next === '$' || next === escape ? next : ch + next;
        this.pos += 2;
      } else if (ch === '$') {
        out += this.variable();
      } else {
        out += ch;
        this.pos++;
      }
    }
    throw new DockerfileError(this.context.line, 'unterminated double quote');
  }

  /** At a `$`: the substituted value, or the reference as written when it is not substituted. */
  private variable(): string {
    const start = this.pos;
    this.pos++;
    const lookup = this.context.lookup;
    if (this.text[this.pos] === '{') {
      this.pos++;
      const name = this.name();
      if (!name) throw new DockerfileError(this.context.line, `bad variable reference ${this.text.slice(start, start + 12)}`);
      let modifier = '';
      if (this.text[this.pos] === ':' && /[-+?]/.test(this.text[this.pos + 1] ?? '')) {
        modifier = this.text.slice(this.pos, this.pos + 2);
        this.pos += 2;
      } else if (/[-+?]/.test(this.text[this.pos] ?? '')) {
        modifier = this.text[this.pos];
        this.pos++;
      } else if (this.text[this.pos] !== '}') {
        const rest = this.text.slice(start, this.text.indexOf('}', start) + 1 || undefined);
        throw new DockerfileError(
          this.context.line,
          `variable expansion ${rest} is not supported (supported: $NAME, \${NAME}, \${NAME:-word}, \${NAME:+word})`,
        );
      }
      const word = modifier ? this.word(false, true) : '';
      if (this.text[this.pos] !== '}') throw new DockerfileError(this.context.line, `missing } in ${this.text.slice(start)}`);
      this.pos++;
      const written = this.text.slice(start, this.pos);
      if (!lookup) return written;
      const value = lookup(name);
      switch (modifier) {
        case '':
          return value ?? written;
        case ':-':
          return value ? value : word;
        case '-':
          return value ?? word;
        case ':+':
          return value ? word : '';
        case '+':
          return value !== undefined ? word : '';
        default:
          // `${NAME:?message}`: required; it may still come from the base template, so it is left to the build.
          return value !== undefined && (modifier === '?' || value !== '') ? value : written;
      }
    }
    if (NAME_START.test(this.text[this.pos] ?? '')) {
      const name = this.name();
      const written = this.text.slice(start, this.pos);
      return lookup ? (lookup(name) ?? written) : written;
    }
    return '$';
  }

  private name(): string {
    const start = this.pos;
    if (!NAME_START.test(this.text[this.pos] ?? '')) return '';
    while (this.pos < this.text.length && NAME_CHAR.test(this.text[this.pos])) this.pos++;
    return this.text.slice(start, this.pos);
  }
}
