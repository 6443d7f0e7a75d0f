import { InvalidImageReferenceError, UnsupportedBaseImageError } from './base-layers.errors';

/** Where a base layer comes from. */
export type BaseSource =
  | { kind: 'debian'; suite: string; image: string }
  | { kind: 'oci'; image: string; registry: string; repository: string; tag?: string; digest?: string };

export interface ReferenceDefaults {
  /** Registry of references that name none (docker.io). */
  registry: string;
}

// The distribution reference grammar (github.com/distribution/reference), enough to validate and split a name.
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::\d{1,5})?$|^\[[0-9a-fA-F:]+\](?::\d{1,5})?$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;

/** Debian's suites by every name Docker Hub's `debian` image tags them with. */
const DEBIAN_SUITES: Record<string, string> = {
  latest: 'stable', stable: 'stable', oldstable: 'oldstable', testing: 'testing', unstable: 'unstable', sid: 'sid',
  buster: 'buster', '10': 'buster', bullseye: 'bullseye', '11': 'bullseye', bookworm: 'bookworm', '12': 'bookworm',
  trixie: 'trixie', '13': 'trixie', forky: 'forky', '14': 'forky',
};

/** Ubuntu's release numbers (Docker Hub's `ubuntu` tags) to suites. */
const UBUNTU_SUITES: Record<string, string> = {
  latest: 'noble', rolling: 'noble', '18.04': 'bionic', bionic: 'bionic', '20.04': 'focal', focal: 'focal',
  '22.04': 'jammy', jammy: 'jammy', '24.04': 'noble', noble: 'noble', '24.10': 'oracular', oracular: 'oracular',
  '25.04': 'plucky', plucky: 'plucky',
};

/**
 * Resolves a build's `fromImage` (E2B's fromImage, fromDebianImage → `debian:<variant>`, fromUbuntuImage →
 * `ubuntu:<variant>`, fromPythonImage → `python:<version>`, ...). `debian` and `ubuntu` without a registry are
 * built from the distribution's packages with mmdebstrap (the same way as `base`, and without a registry); every
 * other reference is pulled from its registry.
 */
export function resolveBaseSource(image: string, defaults: ReferenceDefaults): BaseSource {
  const ref = parseImageReference(image, defaults);
  if (!ref.explicitRegistry && !ref.digest && (ref.repository === 'library/debian' || ref.repository === 'library/ubuntu')) {
    const distribution = ref.repository === 'library/debian' ? 'debian' : 'ubuntu';
    const suite = distributionSuite(distribution, ref.tag ?? 'latest');
    if (distribution === 'ubuntu') {
      throw new UnsupportedBaseImageError(
        `${image}: Ubuntu (${suite}) bases are built from Ubuntu's package archive, and this host only has a Debian mirror; use a debian:<suite> base or an image from a registry`,
      );
    }
    return { kind: 'debian', suite, image };
  }
  return { kind: 'oci', image, registry: ref.registry, repository: ref.repository, tag: ref.tag, digest: ref.digest };
}

function distributionSuite(distribution: 'debian' | 'ubuntu', tag: string): string {
  const table = distribution === 'debian' ? DEBIAN_SUITES : UBUNTU_SUITES;
  // Docker Hub's variants of one suite: bookworm-slim, bookworm-20240110, 12.5, 12-slim, 22.04 (ubuntu's own dots).
  const candidates = [tag, tag.replace(/-slim$/, ''), tag.replace(/-(slim|\d{8})(-slim)?$/, ''), tag.replace(/^(\d+)\.\d+(?:-.*)?$/, '$1')];
  for (const candidate of candidates) {
    const suite = table[candidate];
    if (suite) return suite;
  }
  throw new UnsupportedBaseImageError(
    `${distribution}:${tag}: unknown ${distribution} suite (known: ${[...new Set(Object.values(table))].join(', ')})`,
  );
}

export interface ImageReference {
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
  explicitRegistry: boolean;
}

export function parseImageReference(image: string, defaults: ReferenceDefaults): ImageReference {
  const bad = (why: string) => new InvalidImageReferenceError(`invalid image reference ${JSON.stringify(image)}: ${why}`);
  if (typeof image !== 'string' || image.length === 0 || image.length > 512 || /\s/.test(image)) {
    throw bad('expected name[:tag][@sha256:digest]');
  }
  let rest = image;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad('the digest must be sha256:<64 hex digits>');
  }
  const parts = rest.split('/');
  let registry = defaults.registry;
  let explicitRegistry = false;
  if (parts.length > 1 && (parts[0].includes('.') || parts[0].includes(':') || parts[0] === 'localhost' || parts[0].startsWith('['))) {
    registry = parts.shift()!;
    explicitRegistry = true;
    if (!DOMAIN.test(registry)) throw bad(`bad registry ${registry}`);
  }
  let tag: string | undefined;
  const last = parts[parts.length - 1];
  const colon = last.lastIndexOf(':');
  if (colon >= 0) {
    tag = last.slice(colon + 1);
    parts[parts.length - 1] = last.slice(0, colon);
    if (!TAG.test(tag)) throw bad(`bad tag ${tag}`);
  }
  if (parts.some((part) => !COMPONENT.test(part))) throw bad('repository names are lowercase letters, digits and . _ - separators');
  if (registry === 'docker.io' && parts.length === 1) parts.unshift('library');
  if (registry === 'index.docker.io' || registry === 'registry-1.docker.io') registry = 'docker.io';
  const repository = parts.join('/');
  if (repository.length > 255) throw bad('repository name longer than 255 characters');
  // "docker.io/library/debian" names Docker Hub's image, not the suite: only the bare name is built with mmdebstrap.
  return { registry, repository, tag: tag ?? (digest ? undefined : 'latest'), digest, explicitRegistry };
}

/** Host part of a registry (without port), lowercased, for the insecure-registry rules. */
export function registryHost(registry: string): string {
  const match = /^\[([^\]]+)\](?::\d+)?$/.exec(registry);
  if (match) return match[1].toLowerCase();
  return registry.replace(/:\d+$/, '').toLowerCase();
}
