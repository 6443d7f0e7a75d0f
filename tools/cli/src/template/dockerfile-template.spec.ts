import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Template } from 'e2b';
import { parseDockerfile } from '../dockerfile/dockerfile-parser';
import { stepLabelsOfDockerfile, stepLabelsOfTemplate } from './build-steps';
import { templateFromDockerfile } from './dockerfile-template';

describe('templateFromDockerfile', () => {
  let context: string;
  beforeAll(() => {
    context = mkdtempSync(join(tmpdir(), 'kiln-cli-context-'));
    writeFileSync(join(context, 'app.sh'), 'echo hi\n');
  });
  afterAll(() => rmSync(context, { recursive: true, force: true }));

  const definitionOf = async (dockerfile: string, readyCmd?: string) =>
    JSON.parse(await Template.toJSON(templateFromDockerfile(parseDockerfile(dockerfile), context, readyCmd), false)) as Record<string, unknown>;

  it('makes the SDK template the same calls would: one E2B step per Dockerfile step, in order', async () => {
    const definition = await definitionOf(
      ['FROM base', 'RUN apt-get install -y jq', 'ENV GREETING=hi B=2', 'COPY --chown=user --chmod=755 app.sh /srv/', 'WORKDIR /srv', 'USER user', 'CMD ["python3", "-m", "http.server", "8000"]'].join('\n'),
      'curl -sf localhost:8000',
    );
    expect(definition).toEqual({
      fromTemplate: 'base',
      force: false,
      startCmd: 'python3 -m http.server 8000',
      readyCmd: 'curl -sf localhost:8000',
      steps: [
        { type: 'RUN', args: ['apt-get install -y jq'], force: false },
        { type: 'ENV', args: ['GREETING', 'hi', 'B', '2'], force: false },
        expect.objectContaining({ type: 'COPY', args: ['app.sh', '/srv/', 'user', '0755'], force: false }),
        { type: 'WORKDIR', args: ['/srv'], force: false },
        { type: 'USER', args: ['user'], force: false },
      ],
    });
  });

  it('uses fromImage for an image, and a ready command without a start command', async () => {
    const definition = await definitionOf('FROM debian:bookworm\nRUN true', 'test -f /ready');
    expect(definition).toMatchObject({ fromImage: 'debian:bookworm', readyCmd: 'test -f /ready' });
    expect(definition.fromTemplate).toBeUndefined();
    expect(definition.startCmd).toBeUndefined();
  });

  it('sends no ready command unless one is given', async () => {
    const definition = await definitionOf('FROM base\nCMD server');
    expect(definition.startCmd).toBe('server');
    expect(definition.readyCmd).toBeUndefined();
  });

  it('labels each step number the way the Dockerfile and the SDK definition read', async () => {
    const plan = parseDockerfile('FROM base\nRUN a\nCOPY app.sh /srv/\nCMD server');
    expect(stepLabelsOfDockerfile(plan, 'Dockerfile')).toEqual([
      'FROM base (Dockerfile:1)',
      'RUN a (Dockerfile:2)',
      'COPY app.sh /srv/ (Dockerfile:3)',
      'finalize (start: server): snapshot (Dockerfile:4)',
    ]);
    const template = Template({ fileContextPath: context }).fromTemplate('base').runCmd('a', { user: 'root' }).setEnvs({ A: '1' }).copy('app.sh', '/srv/');
    expect(await stepLabelsOfTemplate(template)).toEqual(['FROM base', 'RUN a (as root)', 'ENV A=1', 'COPY app.sh /srv/', 'finalize: snapshot']);
  });
});
