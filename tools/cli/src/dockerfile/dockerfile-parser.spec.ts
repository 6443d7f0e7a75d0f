import { parseDockerfile, type DockerfileStep } from './dockerfile-parser';
import { DockerfileError } from './dockerfile.errors';

const lines = (...source: string[]) => source.join('\n');

/** The error a Dockerfile raises, for asserting its line and message. */
function errorOf(source: string, options?: Parameters<typeof parseDockerfile>[1]): DockerfileError {
  try {
    parseDockerfile(source, options);
  } catch (error) {
    if (error instanceof DockerfileError) return error;
    throw error;
  }
  throw new Error('the Dockerfile parsed');
}

const stepsOf = (source: string, options?: Parameters<typeof parseDockerfile>[1]): DockerfileStep[] => parseDockerfile(source, options).steps;

describe('parseDockerfile', () => {
  describe('FROM', () => {
    it('takes a bare name as a Kiln template and anything with a tag, registry or digest as an image', () => {
      expect(parseDockerfile('FROM base').base).toEqual({ kind: 'template', name: 'base', line: 1 });
      expect(parseDockerfile('FROM my-template').base.kind).toBe('template');
      expect(parseDockerfile('FROM debian:bookworm').base).toEqual({ kind: 'image', name: 'debian:bookworm', line: 1 });
      expect(parseDockerfile('FROM ubuntu:24.04').base.kind).toBe('image');
      expect(parseDockerfile('FROM 127.0.0.1:5000/app:1').base.kind).toBe('image');
      expect(parseDockerfile('FROM docker.io/library/python').base.kind).toBe('image');
      expect(parseDockerfile('FROM alpine@sha256:abcd').base.kind).toBe('image');
    });

    it('is case-insensitive and substitutes ARGs declared before it', () => {
      expect(parseDockerfile(lines('ARG SUITE=bookworm', 'from debian:${SUITE}')).base.name).toBe('debian:bookworm');
      expect(parseDockerfile(lines('ARG SUITE=bookworm', 'FROM debian:$SUITE'), { buildArgs: { SUITE: 'trixie' } }).base.name).toBe('debian:trixie');
    });

    it('refuses multi-stage builds, scratch, flags and a missing FROM, naming the line', () => {
      expect(errorOf(lines('# c', 'FROM base AS build')).message).toBe('Dockerfile:2: FROM … AS build: multi-stage builds are not supported by Kiln');
      expect(errorOf(lines('FROM base', 'RUN true', 'FROM debian:bookworm')).message).toMatch(/^Dockerfile:3: a second FROM: multi-stage/);
      expect(errorOf('FROM scratch').line).toBe(1);
      expect(errorOf('FROM --platform=linux/arm64 base').message).toMatch(/^Dockerfile:1: FROM --platform is not supported by Kiln/);
      expect(errorOf(lines('ARG A=1', '')).message).toMatch(/no FROM instruction/);
      expect(errorOf(lines('FROM', '')).message).toBe('Dockerfile:1: FROM takes one template or image name');
    });

    it('allows only ARG before FROM', () => {
      expect(errorOf(lines('RUN true', 'FROM base')).message).toBe('Dockerfile:1: RUN before FROM: only ARG may come before the FROM instruction');
    });
  });

  describe('RUN', () => {
    it('keeps the shell form as written and quotes the exec form for the shell', () => {
      expect(stepsOf(lines('FROM base', 'RUN echo "a  b" > /tmp/x'))).toEqual([
        { type: 'RUN', line: 2, instruction: 'RUN echo "a b" > /tmp/x', command: 'echo "a  b" > /tmp/x' },
      ]);
      expect(stepsOf(lines('FROM base', 'RUN ["/bin/echo", "it\'s", "$HOME", "plain"]'))[0]).toMatchObject({
        command: `/bin/echo 'it'\\''s' '$HOME' plain`,
      });
    });

    it('treats a malformed JSON array as shell form, as Docker does', () => {
      expect(stepsOf(lines('FROM base', "RUN ['not', 'json']"))[0]).toMatchObject({ command: "['not', 'json']" });
    });

    it('joins continuation lines, dropping comment and blank lines inside them, and reports the first line', () => {
      const steps = stepsOf(lines('FROM base', '', 'RUN apt-get update && \\', '  # why: jq', '', '    apt-get install -y jq', 'USER user'));
      expect(steps[0]).toEqual({
        type: 'RUN',
        line: 3,
        instruction: 'RUN apt-get update && apt-get install -y jq',
        command: 'apt-get update &&     apt-get install -y jq',
      });
      expect(steps[1]).toMatchObject({ type: 'USER', line: 7 });
    });

    it('accepts whitespace after the escape character and CRLF line ends', () => {
      expect(stepsOf('FROM base\r\nRUN a \\  \r\n b\r\n')[0]).toMatchObject({ command: 'a  b' });
    });

    it('honours an escape directive', () => {
      const plan = parseDockerfile(lines('# escape=`', 'FROM base', 'RUN echo one `', '  two', 'COPY a`$b /x/'));
      expect(plan.steps[0]).toMatchObject({ command: 'echo one   two' });
      expect(plan.steps[1]).toMatchObject({ src: 'a$b' });
    });

    it('ignores the syntax directive and treats a directive after a comment as a comment', () => {
      expect(parseDockerfile(lines('# syntax=docker/dockerfile:1', 'FROM base')).base.name).toBe('base');
      expect(stepsOf(lines('# hello', '# escape=`', 'FROM base', 'RUN a \\', 'b'))[0]).toMatchObject({ command: 'a b' });
    });

    it('exports the ARGs in scope to RUN (an ENV of the same name wins), as Docker does', () => {
      const steps = stepsOf(lines('FROM base', 'RUN before', 'ARG V=1', "ARG Q='a b'", 'ARG UNSET', 'RUN echo $V', 'ENV V=2', 'RUN echo $V'));
      expect(steps[0]).toMatchObject({ command: 'before' });
      expect(steps[1]).toMatchObject({ command: "export V=1 Q='a b'; echo $V" });
      expect(steps[3]).toMatchObject({ command: "export Q='a b'; echo $V" });
    });

    it('refuses heredocs and RUN flags, naming the line', () => {
      expect(errorOf(lines('FROM base', 'RUN <<EOF', 'echo hi', 'EOF')).message).toMatch(/^Dockerfile:2: heredocs \(<<EOF\) are not supported/);
      expect(errorOf(lines('FROM base', 'RUN python3 <<-"PY"', 'print(1)', 'PY')).line).toBe(2);
      expect(stepsOf(lines('FROM base', 'RUN cat <<< "here string" && echo $((1<<2))'))).toHaveLength(1);
      expect(errorOf(lines('FROM base', 'RUN --mount=type=cache,target=/x make')).message).toMatch(/^Dockerfile:2: RUN --mount is not supported by Kiln/);
      expect(errorOf(lines('FROM base', 'RUN')).message).toBe('Dockerfile:2: RUN needs a command');
    });
  });

  describe('COPY and ADD', () => {
    it('copies each source as its own step, with --chown and --chmod', () => {
      expect(stepsOf(lines('FROM base', 'COPY --chown=user --chmod=0755 a.sh b/ /srv/'))).toEqual([
        { type: 'COPY', line: 2, instruction: 'COPY --chown=user --chmod=0755 a.sh b/ /srv/', src: 'a.sh', dest: '/srv/', user: 'user', mode: 0o755 },
        { type: 'COPY', line: 2, instruction: 'COPY --chown=user --chmod=0755 a.sh b/ /srv/', src: 'b', dest: '/srv/', user: 'user', mode: 0o755 },
      ]);
    });

    it('reads the JSON form, ADD of local files, and resolves destinations against WORKDIR', () => {
      const steps = stepsOf(lines('FROM base', 'WORKDIR /srv', 'ADD ["my file.txt", "data/"]', 'COPY /abs.txt .', 'COPY x ./y', 'COPY z /etc/z'));
      expect(steps.slice(1).map((s) => s.type === 'COPY' && [s.src, s.dest])).toEqual([
        ['my file.txt', '/srv/data/'],
        ['abs.txt', '/srv/'],
        ['x', '/srv/y'],
        ['z', '/etc/z'],
      ]);
    });

    it('substitutes ARG and ENV values in sources, destinations and flags', () => {
      const steps = stepsOf(lines('FROM base', 'ARG OWNER=user', 'ENV APP=/srv/app', 'COPY --chown=$OWNER ${NAME:-app}.sh $APP/'));
      expect(steps[1]).toMatchObject({ src: 'app.sh', dest: '/srv/app/', user: 'user' });
    });

    it('refuses what Kiln cannot copy, naming the line', () => {
      const from = 'FROM base';
      expect(errorOf(lines(from, 'COPY --from=build /out /srv/')).message).toBe(
        'Dockerfile:2: COPY --from is not supported by Kiln (multi-stage builds are not supported) (supported: --chown, --chmod)',
      );
      expect(errorOf(lines(from, 'ADD https://example.com/x.tgz /opt/')).message).toMatch(/^Dockerfile:2: ADD from a URL/);
      expect(errorOf(lines(from, 'ADD git@github.com:o/r.git /src')).line).toBe(2);
      expect(errorOf(lines(from, 'RUN true', 'ADD rootfs.tar.gz /')).message).toMatch(/^Dockerfile:3: ADD rootfs.tar.gz: Docker would unpack this archive/);
      expect(errorOf(lines(from, 'ADD blob /'), { isArchive: (src) => src === 'blob' }).line).toBe(2);
      expect(stepsOf(lines(from, 'COPY rootfs.tar.gz /'))).toHaveLength(1);
      expect(errorOf(lines(from, 'COPY ../secret /x')).message).toBe('Dockerfile:2: COPY source ../secret is outside the build context');
      expect(errorOf(lines(from, 'COPY a b /x')).message).toMatch(/several sources needs a destination directory ending in \//);
      expect(errorOf(lines(from, 'COPY onlyone')).message).toMatch(/needs at least one source and a destination/);
      expect(errorOf(lines(from, 'COPY --chown=user:staff a /x')).message).toMatch(/a group is not supported by Kiln \(use --chown=user\)/);
      expect(stepsOf(lines(from, 'COPY --chown=user:user a /x'))[0]).toMatchObject({ user: 'user' });
      expect(errorOf(lines(from, 'COPY --chmod=u+x a /x')).message).toMatch(/only octal modes/);
      expect(errorOf(lines(from, 'COPY <<EOF /x', 'hi', 'EOF')).message).toMatch(/^Dockerfile:2: heredocs/);
    });
  });

  describe('ENV', () => {
    it('reads NAME=value pairs with quotes and escapes, and the legacy NAME value form', () => {
      const steps = stepsOf(lines('FROM base', 'ENV A=1 B="two words" C=\'$lit\' D=a\\ b', 'ENV LEGACY  hello   "big" world'));
      expect(steps[0]).toMatchObject({ type: 'ENV', envs: [['A', '1'], ['B', 'two words'], ['C', '$lit'], ['D', 'a b']] });
      expect(steps[1]).toMatchObject({ type: 'ENV', envs: [['LEGACY', 'hello   big world']] });
    });

    it('substitutes earlier values (as they were before the instruction) and keeps unknown ones for the build', () => {
      const steps = stepsOf(lines('FROM base', 'ENV A=1', 'ENV A=2 B=$A C=${A}x', 'ENV PATH=/opt/bin:$PATH D=${NOPE:-dflt} E=${A:+set}'));
      expect(steps[1]).toMatchObject({ envs: [['A', '2'], ['B', '1'], ['C', '1x']] });
      expect(steps[2]).toMatchObject({ envs: [['PATH', '/opt/bin:$PATH'], ['D', 'dflt'], ['E', 'set']] });
    });

    it('refuses a name without a value, mixed forms and unsupported expansions', () => {
      expect(errorOf(lines('FROM base', 'ENV ONLY')).message).toBe('Dockerfile:2: ENV ONLY needs a value (ENV NAME=value or ENV NAME value)');
      expect(errorOf(lines('FROM base', 'ENV A=1 B')).message).toMatch(/^Dockerfile:2: ENV B: expected NAME=value/);
      expect(errorOf(lines('FROM base', 'ENV A=${B/x/y}')).message).toMatch(/^Dockerfile:2: variable expansion \$\{B\/x\/y\} is not supported/);
      expect(errorOf(lines('FROM base', 'ENV A="open')).message).toBe('Dockerfile:2: unterminated double quote');
    });
  });

  describe('ARG', () => {
    it('uses defaults, lets --build-arg override them, and re-imports a global ARG redeclared after FROM', () => {
      const source = lines('ARG SUITE=bookworm', 'FROM debian:$SUITE', 'ARG SUITE', 'ARG USERNAME=user DIR=/srv', 'WORKDIR $DIR/$SUITE', 'USER ${USERNAME}');
      const plan = parseDockerfile(source, { buildArgs: { DIR: '/opt', EXTRA: 'x' } });
      expect(plan.steps.map((s) => (s.type === 'WORKDIR' ? s.path : s.type === 'USER' ? s.user : s.type))).toEqual(['/opt/bookworm', 'user']);
      expect(plan.warnings).toEqual(['--build-arg EXTRA is not used by any ARG']);
    });

    it('keeps a global ARG out of later instructions unless it is redeclared', () => {
      expect(stepsOf(lines('ARG V=1', 'FROM base', 'WORKDIR /x$V'))[0]).toMatchObject({ path: '/x$V' });
    });

    it('refuses a bad name', () => {
      expect(errorOf(lines('FROM base', 'ARG 1BAD=x')).message).toBe('Dockerfile:2: invalid ARG name "1BAD"');
    });
  });

  describe('WORKDIR and USER', () => {
    it('resolves a relative WORKDIR against the previous one', () => {
      const steps = stepsOf(lines('FROM base', 'WORKDIR rel', 'WORKDIR /srv', 'WORKDIR app', 'WORKDIR "/with space"'));
      expect(steps.map((s) => s.type === 'WORKDIR' && s.path)).toEqual(['rel', '/srv', '/srv/app', '/with space']);
    });

    it('takes a user name and refuses a group', () => {
      expect(stepsOf(lines('FROM base', 'USER root'))[0]).toEqual({ type: 'USER', line: 2, instruction: 'USER root', user: 'root' });
      expect(errorOf(lines('FROM base', 'USER user:staff')).message).toMatch(/^Dockerfile:2: USER user:staff: a group is not supported/);
      expect(errorOf(lines('FROM base', 'WORKDIR')).message).toBe('Dockerfile:2: WORKDIR needs a path');
    });
  });

  describe('CMD and ENTRYPOINT', () => {
    const start = (...instructions: string[]) => parseDockerfile(lines('FROM base', ...instructions));

    it('uses CMD alone in either form', () => {
      expect(start('CMD python3 -m http.server 8000').startCmd).toBe('python3 -m http.server 8000');
      expect(start('CMD ["python3", "-m", "http.server", "8000"]')).toMatchObject({ startCmd: 'python3 -m http.server 8000', startCmdLine: 2 });
      expect(start('CMD ["echo", "a b"]').startCmd).toBe("echo 'a b'");
    });

    it('combines an exec-form ENTRYPOINT with CMD as its arguments, in either order', () => {
      expect(start('CMD ["8000"]', 'ENTRYPOINT ["python3", "-m", "http.server"]')).toMatchObject({ startCmd: 'python3 -m http.server 8000', startCmdLine: 3 });
      expect(start('ENTRYPOINT ["/entry.sh"]', 'CMD run it').startCmd).toBe("/entry.sh /bin/sh -c 'run it'");
      expect(start('ENTRYPOINT ["/entry.sh"]').startCmd).toBe('/entry.sh');
    });

    it('lets a shell-form ENTRYPOINT ignore CMD, with a warning', () => {
      const plan = start('ENTRYPOINT exec server --port 1', 'CMD ["ignored"]');
      expect(plan.startCmd).toBe('exec server --port 1');
      expect(plan.warnings).toEqual(['Dockerfile:3: CMD is ignored: a shell-form ENTRYPOINT does not take arguments']);
    });

    it('uses the last CMD, and no start command without either', () => {
      expect(start('CMD first', 'CMD second').startCmd).toBe('second');
      expect(start('RUN true').startCmd).toBeUndefined();
      expect(start('CMD []').startCmd).toBeUndefined();
    });
  });

  describe('unsupported instructions', () => {
    it.each(['EXPOSE 8000', 'HEALTHCHECK CMD true', 'VOLUME /data', 'ONBUILD RUN true', 'STOPSIGNAL SIGTERM', 'SHELL ["/bin/bash", "-c"]', 'LABEL a=b', 'MAINTAINER me', 'FROBNICATE'])(
      '%s fails naming its line and the supported set',
      (instruction) => {
        const keyword = instruction.split(' ')[0];
        expect(errorOf(lines('FROM base', 'RUN true', '', `${instruction.toLowerCase()}`)).message).toBe(
          `Dockerfile:4: instruction ${keyword} is not supported by Kiln (supported: FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, CMD, ENTRYPOINT)`,
        );
      },
    );

    it('names the first offending line even when a later one is also wrong', () => {
      expect(errorOf(lines('FROM base', 'EXPOSE 1', 'VOLUME /x')).line).toBe(2);
    });

    it('reports the start line of a continued unsupported instruction and names the file it was given', () => {
      const error = errorOf(lines('FROM base', 'LABEL a=b \\', '  c=d'));
      expect(error.line).toBe(2);
      expect(error.inFile('app/Dockerfile.dev').message).toMatch(/^app\/Dockerfile\.dev:2: instruction LABEL/);
    });
  });

  it('keeps the order of every step and skips comments and blank lines', () => {
    const plan = parseDockerfile(
      lines('# syntax=docker/dockerfile:1', '# build the app', 'FROM base', '', 'RUN apt-get install -y jq', '# env', 'ENV GREETING=hi', 'COPY app.sh /srv/', 'WORKDIR /srv', 'USER user', 'CMD python3 -m http.server 8000'),
    );
    expect(plan.steps.map((s) => `${s.line}:${s.type}`)).toEqual(['5:RUN', '7:ENV', '8:COPY', '9:WORKDIR', '10:USER']);
    expect(plan.startCmd).toBe('python3 -m http.server 8000');
  });
});
