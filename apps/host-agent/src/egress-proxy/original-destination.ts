import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import type { Destination } from './egress-decision';
import { OriginalDestinationUnavailableError } from './egress-proxy.errors';

const ADDON_FILE = 'original_destination.node';

interface OriginalDestinationAddon {
  originalDestination(fd: number): Destination;
}

/** The node-gyp build directory, from the TypeScript source (tests) and from tsc output (dist/) alike. */
function addonCandidates(): string[] {
  return [join(__dirname, '..', '..', 'native', 'build', 'Release', ADDON_FILE)];
}

/**
 * Reads where a redirected connection was going (getsockopt SO_ORIGINAL_DST, from the host agent's native addon
 * in apps/host-agent/native). Node exposes no such call; the addon is built by `host-agent:build`.
 */
export class OriginalDestinationReader {
  private constructor(private readonly addon: OriginalDestinationAddon) {}

  /** Throws OriginalDestinationUnavailableError naming every place it looked. */
  static load(): OriginalDestinationReader {
    const candidates = addonCandidates();
    const found = candidates.find((path) => existsSync(path));
    if (!found) {
      throw new OriginalDestinationUnavailableError(
        `native addon ${ADDON_FILE} not found (looked in ${candidates.join(', ')}); build it with npx nx run host-agent:build-native`,
      );
    }
    const module = { exports: {} as OriginalDestinationAddon };
    try {
      process.dlopen(module, found);
    } catch (error) {
      throw new OriginalDestinationUnavailableError(`native addon ${found} does not load: ${(error as Error).message}`);
    }
    return new OriginalDestinationReader(module.exports);
  }

  /** The destination before the host's redirect; throws when the socket was not redirected (no NAT record). */
  of(socket: Socket): Destination {
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) throw new Error('socket has no file descriptor');
    return this.addon.originalDestination(fd);
  }
}
