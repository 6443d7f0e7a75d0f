import type { BuildStep } from '@kiln/proto/hostagent';
import { applyToContext, baseKey, forcedLayerKey, layerKey, normaliseAbsolute, parseStep, type BuildContext } from './build-steps';
import { InvalidBuildRequestError } from './template-build.errors';

const step = (type: string, args: string[], extra: Partial<BuildStep> = {}): BuildStep => ({
  type,
  args,
  filesHash: '',
  filesPath: '',
  filesSha256: '',
  force: false,
  ...extra,
});
const SHA_A = 'a'.repeat(64);
const SHA_B = 'b'.repeat(64);
const copy = (sha = SHA_A, args = ['app.sh', '/srv/']) => step('COPY', args, { filesHash: 'h1', filesPath: 'files/team/h1', filesSha256: sha });

describe('build steps', () => {
  it('parses each step type and refuses malformed ones, naming the step', () => {
    expect(parseStep(step('RUN', ['apt-get install -y jq', 'root']), 1)).toEqual({ type: 'RUN', command: 'apt-get install -y jq', user: 'root' });
    expect(parseStep(copy(SHA_A, ['app.sh', '/srv/', 'user', '0755']), 2)).toMatchObject({ type: 'COPY', src: 'app.sh', dest: '/srv/', user: 'user', mode: '0755' });
    expect(parseStep(step('ENV', ['A', '1', 'B', 'two words']), 3)).toEqual({ type: 'ENV', envs: { A: '1', B: 'two words' } });
    expect(parseStep(step('WORKDIR', ['/srv']), 4)).toEqual({ type: 'WORKDIR', path: '/srv' });
    expect(parseStep(step('USER', ['user']), 5)).toEqual({ type: 'USER', user: 'user' });

    const refused: Array<[BuildStep, RegExp]> = [
      [step('HEALTHCHECK', ['x']), /step 7 \(HEALTHCHECK\): unknown step type/],
      [step('RUN', []), /step 7 \(RUN\): expects/],
      [step('ENV', ['A']), /step 7 \(ENV\)/],
      [step('ENV', ['1BAD', 'x']), /invalid variable name/],
      [step('USER', ['bad name']), /step 7 \(USER\)/],
      [copy(SHA_A, ['../etc/passwd', '/x']), /inside the build context/],
      [copy(SHA_A, ['/abs', '/x']), /inside the build context/],
      [copy('nothex', ['a', '/x']), /files_sha256/],
      [copy(SHA_A, ['a', '/x', 'root', 'rwx']), /octal/],
      [step('COPY', ['a', '/x'], { filesSha256: SHA_A }), /files_path/],
    ];
    for (const [bad, message] of refused) {
      expect(() => parseStep(bad, 7)).toThrow(InvalidBuildRequestError);
      expect(() => parseStep(bad, 7)).toThrow(message);
    }
  });

  it('keeps ENV, WORKDIR and USER as context (WORKDIR relative to the previous one, normalised)', () => {
    let context: BuildContext = { envs: { KEEP: '1' }, user: 'user' };
    context = applyToContext(context, parseStep(step('ENV', ['GREETING', 'hi', 'KEEP', '2']), 1));
    context = applyToContext(context, parseStep(step('WORKDIR', ['/srv']), 2));
    context = applyToContext(context, parseStep(step('WORKDIR', ['app/../web/.']), 3));
    context = applyToContext(context, parseStep(step('USER', ['root']), 4));
    expect(context).toEqual({ envs: { KEEP: '2', GREETING: 'hi' }, workdir: '/srv/web', user: 'root' });
    expect(normaliseAbsolute('../../..', '/a')).toBe('/');
  });

  describe('layer keys', () => {
    const context: BuildContext = { envs: { A: '1', B: '2' }, workdir: '/srv', user: 'user' };
    const run = parseStep(step('RUN', ['make']), 1) as Extract<ReturnType<typeof parseStep>, { type: 'RUN' }>;
    const parent = baseKey({ template: { templateId: 'base', buildId: 'b1' } });

    it('are stable sha256 hex strings, whatever the order the envs were set in', () => {
      const key = layerKey(parent, run, context);
      expect(key).toMatch(/^[0-9a-f]{64}$/);
      expect(layerKey(parent, run, { ...context, envs: { B: '2', A: '1' } })).toBe(key);
    });

    it('of a forced step are fresh per build and never the cached plain key', () => {
      const key = layerKey(parent, run, context);
      const forcedOne = forcedLayerKey(key, 'build-1');
      expect(forcedOne).toMatch(/^[0-9a-f]{64}$/);
      expect(forcedOne).not.toBe(key);
      expect(forcedLayerKey(key, 'build-1')).toBe(forcedOne);
      expect(forcedLayerKey(key, 'build-2')).not.toBe(forcedOne);
    });

    it('change with the parent, the step, its user, its files and the context it runs with', () => {
      const key = layerKey(parent, run, context);
      const others = [
        layerKey(baseKey({ template: { templateId: 'base', buildId: 'b2' } }), run, context),
        layerKey(baseKey({ imageKey: 'b1' }), run, context),
        layerKey(parent, { ...run, command: 'make all' }, context),
        layerKey(parent, { ...run, user: 'root' }, context),
        layerKey(parent, run, { ...context, envs: { A: '1', B: '3' } }),
        layerKey(parent, run, { ...context, workdir: undefined }),
        layerKey(parent, run, { ...context, user: 'root' }),
      ];
      expect(new Set([key, ...others]).size).toBe(others.length + 1);

      const copyA = parseStep(copy(SHA_A), 2) as Extract<ReturnType<typeof parseStep>, { type: 'COPY' }>;
      const copyB = parseStep(copy(SHA_B), 2) as Extract<ReturnType<typeof parseStep>, { type: 'COPY' }>;
      expect(layerKey(key, copyA, context)).not.toBe(layerKey(key, copyB, context));
      // The archive's path is where it was stored, not what it holds: it does not change the key.
      expect(layerKey(key, { ...copyA, filesPath: 'files/other/h1' }, context)).toBe(layerKey(key, copyA, context));
    });

    it('a template base and an image base never share a key', () => {
      expect(baseKey({ template: { templateId: 'x', buildId: 'y' } })).not.toBe(baseKey({ imageKey: 'x/y' }));
    });
  });
});
