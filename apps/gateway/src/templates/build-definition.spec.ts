import { ErrorCode, KilnError } from '@kiln/contracts';
import { isImageReference, parseBuildDefinition } from './build-definition';

const HASH = 'a'.repeat(64);

function rejection(body: unknown): string {
  try {
    parseBuildDefinition(body);
  } catch (error) {
    expect(error).toBeInstanceOf(KilnError);
    expect((error as KilnError).code).toBe(ErrorCode.InvalidArgument);
    return (error as KilnError).message;
  }
  throw new Error('the definition was accepted');
}

describe('parseBuildDefinition', () => {
  it("normalises the SDK's definition, ignoring its per-step bookkeeping", () => {
    const definition = parseBuildDefinition({
      fromTemplate: 'base',
      force: false,
      startCmd: 'python3 -m http.server 8000',
      readyCmd: 'curl -s localhost:8000',
      steps: [
        { type: 'RUN', args: ['apt-get install -y jq', 'root'], force: false },
        { type: 'ENV', args: ['GREETING', 'hi'], force: false },
        { type: 'COPY', args: ['app.sh', '/srv/', '', ''], filesHash: HASH, force: true, forceUpload: true, resolveSymlinks: false, gzip: true },
        { type: 'WORKDIR', args: ['/srv'], force: false },
        { type: 'USER', args: ['user'] },
      ],
    });
    expect(definition).toEqual({
      fromTemplate: 'base',
      force: false,
      startCmd: 'python3 -m http.server 8000',
      readyCmd: 'curl -s localhost:8000',
      steps: [
        { type: 'RUN', args: ['apt-get install -y jq', 'root'], force: false },
        { type: 'ENV', args: ['GREETING', 'hi'], force: false },
        { type: 'COPY', args: ['app.sh', '/srv/', '', ''], filesHash: HASH, force: true },
        { type: 'WORKDIR', args: ['/srv'], force: false },
        { type: 'USER', args: ['user'], force: false },
      ],
    });
  });

  it('keeps registry credentials of type registry with fromImage, and drops a leftover registry with fromTemplate', () => {
    expect(parseBuildDefinition({ fromImage: '127.0.0.1:5000/app:1', fromImageRegistry: { type: 'registry', username: 'u', password: 'p' } })).toEqual({
      fromImage: '127.0.0.1:5000/app:1',
      fromImageRegistry: { username: 'u', password: 'p' },
      force: false,
      steps: [],
    });
    expect(parseBuildDefinition({ fromTemplate: 'base', fromImageRegistry: { type: 'aws' } }).fromImageRegistry).toBeUndefined();
  });

  it.each([
    [{ fromTemplate: 'base', steps: [{ type: 'RUN', args: ['true'] }, { type: 'EXPOSE', args: ['80'] }] }, 'step 2 (EXPOSE): unknown step type; supported: RUN, COPY, ENV, WORKDIR, USER'],
    [{ fromTemplate: 'base', steps: [{ type: 'RUN', args: [] }] }, 'step 1 (RUN): takes [command, user?], got 0 arguments'],
    [{ fromTemplate: 'base', steps: [{ type: 'WORKDIR', args: ['/a', '/b'] }] }, 'step 1 (WORKDIR): takes [path], got 2 arguments'],
    [{ fromTemplate: 'base', steps: [{ type: 'ENV', args: ['A'] }] }, 'step 1 (ENV): takes [name, value, ...] pairs, got 1 argument'],
    [{ fromTemplate: 'base', steps: [{ type: 'ENV', args: ['1A', 'x'] }] }, "step 1 (ENV): '1A' is not an environment variable name"],
    [{ fromTemplate: 'base', steps: [{ type: 'USER', args: ['bad user'] }] }, "step 1 (USER): 'bad user' is not a user name"],
    [{ fromTemplate: 'base', steps: [{ type: 'COPY', args: ['a', '/b'] }] }, 'step 1 (COPY): filesHash must be the hash of the uploaded files'],
    [{ fromTemplate: 'base', steps: [{ type: 'COPY', args: ['/etc/passwd', '/b'], filesHash: HASH }] }, "step 1 (COPY): src '/etc/passwd' must be relative to the build context"],
    [{ fromTemplate: 'base', steps: [{ type: 'COPY', args: ['a', '/b', '', '9999'], filesHash: HASH }] }, "step 1 (COPY): mode '9999' is not an octal file mode (e.g. 0755)"],
    [{ fromTemplate: 'base', steps: [{ type: 'RUN', args: ['true', 7] }] }, 'step 1 (RUN): args must be an array of strings'],
    [{ fromTemplate: 'base', steps: ['RUN true'] }, 'step 1: must be an object with a type and args'],
    [{ fromTemplate: 'base', steps: {} }, 'steps must be an array'],
    [{ fromImage: 'debian:bookworm', fromTemplate: 'base' }, 'give either fromImage or fromTemplate, not both'],
    [{ steps: [] }, 'give the base to build from: fromImage or fromTemplate'],
    [{ fromImage: 'Not A Valid//Image' }, "fromImage 'Not A Valid//Image' is not a valid image reference"],
    [{ fromImage: 'app', fromImageRegistry: { type: 'aws', awsAccessKeyId: 'a', awsSecretAccessKey: 'b', awsRegion: 'c' } }, "fromImageRegistry type 'aws' (AWS ECR) is not supported; use type 'registry' with a username and password"],
    [{ fromImage: 'app', fromImageRegistry: { type: 'gcp', serviceAccountJson: '{}' } }, "fromImageRegistry type 'gcp' (GCP Artifact Registry) is not supported; use type 'registry' with a username and password"],
    [{ fromImage: 'app', fromImageRegistry: { type: 'registry', username: 'u' } }, "fromImageRegistry of type 'registry' needs a username and a password"],
    [{ fromTemplate: 'base', startCmd: 5 }, 'startCmd must be a string'],
    [{ fromTemplate: 'base', force: 'yes' }, 'force must be a boolean'],
    [[], 'the body must be a JSON object (TemplateBuildStartV2)'],
  ])('refuses %j: %s', (body, message) => {
    expect(rejection(body)).toBe(message);
  });
});

describe('isImageReference', () => {
  it.each(['debian:bookworm', 'ubuntu', 'e2bdev/base', '127.0.0.1:5000/kiln/app:1.0', 'ghcr.io/org/img@sha256:' + 'a'.repeat(64), 'localhost:5000/x_y__z-w:tag'])(
    'accepts %s',
    (ref) => expect(isImageReference(ref)).toBe(true),
  );
  it.each(['', 'UPPER/case', 'a//b', '-leading', 'img:', 'img:-tag', 'a b', 'x'.repeat(300)])('refuses %j', (ref) => expect(isImageReference(ref)).toBe(false));
});
