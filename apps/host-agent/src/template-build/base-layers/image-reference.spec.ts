import { InvalidImageReferenceError, UnsupportedBaseImageError } from './base-layers.errors';
import { parseImageReference, registryHost, resolveBaseSource } from './image-reference';

const defaults = { registry: 'docker.io' };

describe('resolveBaseSource', () => {
  it('builds bare debian names from the suite, with Docker Hub tag variants', () => {
    expect(resolveBaseSource('debian:bookworm', defaults)).toEqual({ kind: 'debian', suite: 'bookworm', image: 'debian:bookworm' });
    expect(resolveBaseSource('debian', defaults)).toMatchObject({ kind: 'debian', suite: 'stable' });
    expect(resolveBaseSource('debian:stable', defaults)).toMatchObject({ kind: 'debian', suite: 'stable' });
    expect(resolveBaseSource('debian:12-slim', defaults)).toMatchObject({ kind: 'debian', suite: 'bookworm' });
    expect(resolveBaseSource('debian:12.5', defaults)).toMatchObject({ kind: 'debian', suite: 'bookworm' });
    expect(resolveBaseSource('debian:bookworm-20240110-slim', defaults)).toMatchObject({ kind: 'debian', suite: 'bookworm' });
    expect(resolveBaseSource('library/debian:bullseye', defaults)).toMatchObject({ kind: 'debian', suite: 'bullseye' });
  });

  it('refuses ubuntu suites (no Ubuntu mirror) naming the suite, and unknown suites', () => {
    expect(() => resolveBaseSource('ubuntu:22.04', defaults)).toThrow(UnsupportedBaseImageError);
    expect(() => resolveBaseSource('ubuntu:22.04', defaults)).toThrow(/jammy/);
    expect(() => resolveBaseSource('debian:hamm', defaults)).toThrow(UnsupportedBaseImageError);
  });

  it('pulls everything else, including debian from an explicit registry or by digest', () => {
    expect(resolveBaseSource('python:3', defaults)).toEqual({ kind: 'oci', image: 'python:3', registry: 'docker.io', repository: 'library/python', tag: '3', digest: undefined });
    expect(resolveBaseSource('docker.io/debian:bookworm', defaults)).toMatchObject({ kind: 'oci', repository: 'library/debian' });
    expect(resolveBaseSource(`debian@sha256:${'a'.repeat(64)}`, defaults)).toMatchObject({ kind: 'oci', digest: `sha256:${'a'.repeat(64)}`, tag: undefined });
    expect(resolveBaseSource('127.0.0.1:5000/team/app:v1', defaults)).toMatchObject({ kind: 'oci', registry: '127.0.0.1:5000', repository: 'team/app', tag: 'v1' });
    expect(resolveBaseSource('ghcr.io/org/img', { registry: 'mirror.local' })).toMatchObject({ registry: 'ghcr.io', repository: 'org/img', tag: 'latest' });
    expect(resolveBaseSource('node:20', { registry: 'mirror.local:5000' })).toMatchObject({ registry: 'mirror.local:5000', repository: 'node', tag: '20' });
  });
});

describe('parseImageReference', () => {
  it.each(['', 'UPPER', 'a//b', 'a:b:c', 'has space', `x@sha256:${'z'.repeat(64)}`, 'a:-tag', 'a/'])('rejects %j', (ref) => {
    expect(() => parseImageReference(ref, defaults)).toThrow(InvalidImageReferenceError);
  });

  it('splits registry, repository, tag and digest', () => {
    expect(parseImageReference(`localhost:5000/a/b:t@sha256:${'0'.repeat(64)}`, defaults)).toEqual({
      registry: 'localhost:5000', repository: 'a/b', tag: 't', digest: `sha256:${'0'.repeat(64)}`, explicitRegistry: true,
    });
    expect(registryHost('localhost:5000')).toBe('localhost');
    expect(registryHost('[::1]:5000')).toBe('::1');
  });
});
