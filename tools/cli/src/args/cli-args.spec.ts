import { CliUsageError } from '../cli.errors';
import { parseCliArgs } from './cli-args';

const usageError = (argv: string[]): CliUsageError => {
  try {
    parseCliArgs(argv);
  } catch (error) {
    if (error instanceof CliUsageError) return error;
    throw error;
  }
  throw new Error('the arguments parsed');
};

describe('parseCliArgs', () => {
  it('answers help at every level', () => {
    expect(parseCliArgs([])).toEqual({ kind: 'help', topic: 'kiln' });
    expect(parseCliArgs(['--help'])).toEqual({ kind: 'help', topic: 'kiln' });
    expect(parseCliArgs(['template'])).toEqual({ kind: 'help', topic: 'template' });
    expect(parseCliArgs(['template', 'build', '--help'])).toEqual({ kind: 'help', topic: 'template build' });
    expect(parseCliArgs(['template', 'build', '-f', 'Dockerfile', '-h'])).toEqual({ kind: 'help', topic: 'template build' });
    expect(parseCliArgs(['help', 'template', 'build'])).toEqual({ kind: 'help', topic: 'template build' });
    expect(parseCliArgs(['--version'])).toEqual({ kind: 'version' });
  });

  it('reads a minimal build with defaults left to the SDK', () => {
    expect(parseCliArgs(['template', 'build', '-f', 'Dockerfile', '-n', 'app'])).toEqual({
      kind: 'template-build',
      options: {
        file: 'Dockerfile',
        name: 'app',
        context: undefined,
        cpuCount: undefined,
        memoryMB: undefined,
        skipCache: false,
        tags: [],
        buildArgs: {},
        readyCmd: undefined,
        progress: 'auto',
      },
    });
  });

  it('reads every option, in both --opt value and --opt=value forms, with repeats where allowed', () => {
    const command = parseCliArgs(
      ['template', 'build', '--file=t.ts', '--name', 'app:v1', '--context', 'ctx', '--cpu=4', '--memory', '2048', '--skip-cache',
        '--tag', 'stable', '-t', 'latest', '--build-arg', 'A=1', '--build-arg=B=x=y', '--build-arg', 'FROM_ENV', '--build-arg', 'MISSING',
        '--ready-cmd', 'curl -sf localhost:8000', '--plain'],
      { FROM_ENV: 'env-value' },
    );
    expect(command).toEqual({
      kind: 'template-build',
      options: {
        file: 't.ts',
        name: 'app:v1',
        context: 'ctx',
        cpuCount: 4,
        memoryMB: 2048,
        skipCache: true,
        tags: ['stable', 'latest'],
        buildArgs: { A: '1', B: 'x=y', FROM_ENV: 'env-value' },
        readyCmd: 'curl -sf localhost:8000',
        progress: 'plain',
      },
    });
    expect(parseCliArgs(['template', 'build', '-f', 'D', '-n', 'a', '--progress', 'tty'])).toMatchObject({ options: { progress: 'tty' } });
  });

  it.each([
    [['frobnicate'], 'unknown command "frobnicate"'],
    [['template', 'push'], 'unknown command "template push"'],
    [['template', 'build', '-n', 'app'], '-f/--file is required (a Dockerfile or a template.ts/.mjs/.js)'],
    [['template', 'build', '-f', 'Dockerfile'], '-n/--name is required (the template name, optionally name:tag)'],
    [['template', 'build', '-f', 'D', '-n', 'a', '--cpu', '0'], '--cpu must be a whole number from 1 to 64 (got "0")'],
    [['template', 'build', '-f', 'D', '-n', 'a', '--memory', '1.5'], '--memory must be a whole number from 128 to 1048576 (got "1.5")'],
    [['template', 'build', '-f', 'D', '-n', 'a', '--memory'], '--memory needs a value'],
    [['template', 'build', '-f', 'D', '-n', 'a', '--verbose'], 'unknown option --verbose'],
    [['template', 'build', '-f', 'D', '-n', 'a', 'extra'], 'unexpected argument "extra"'],
    [['template', 'build', '-f', 'D', '-f', 'E', '-n', 'a'], '--file given more than once'],
    [['template', 'build', '-f', 'D', '-n', 'a', '--skip-cache=yes'], '--skip-cache takes no value'],
    [['template', 'build', '-f', 'D', '-n', 'my app'], 'invalid template name "my app": NAME or NAME:TAG'],
    [['template', 'build', '-f', 'D', '-n', 'a', '--build-arg', '=x'], 'invalid --build-arg "=x": NAME=VALUE'],
    [['template', 'build', '-f', 'D', '-n', 'a', '--tag', 'a b'], 'invalid --tag "a b"'],
    [['template', 'build', '-f', 'D', '-n', 'a', '--progress', 'fancy'], '--progress must be auto, tty or plain (got "fancy")'],
    [['template', 'build', '-f', 'D', '-n', 'a', '--ready-cmd', ' '], '--ready-cmd needs a command'],
  ])('%j is a usage error: %s', (argv, message) => {
    expect(usageError(argv).message).toBe(message);
  });

  it('points build errors at the build help', () => {
    expect(usageError(['template', 'build']).helpCommand).toBe('kiln template build --help');
    expect(usageError(['nope']).helpCommand).toBe('kiln --help');
  });
});
