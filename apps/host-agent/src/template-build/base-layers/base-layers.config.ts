import { join } from 'node:path';
import type { HostAgentEnv } from '@kiln/config';

/** Settings of base layer preparation, from the agent's validated env (HostAgentEnv). */
export class BaseLayersConfig {
  constructor(
    /** KILN_DATA_DIR: bases go to <dataDir>/build-cache/bases, the shared .deb cache is <dataDir>/cache/debs. */
    readonly dataDir: string,
    /** Registry of references that name none (KILN_BUILD_REGISTRY, docker.io). */
    readonly defaultRegistry: string = 'docker.io',
    /** Pulls from the default registry go here instead (KILN_BUILD_REGISTRY_MIRROR, host[:port]). */
    readonly registryMirror: string | undefined = undefined,
    /** Registries reached over plain HTTP or unverified TLS, host[:port] or host (127.0.0.1 and localhost always). */
    readonly insecureRegistries: readonly string[] = [],
    /** Debian mirror for debian:<suite> bases; undefined: the host's apt source, else deb.debian.org. */
    readonly debianMirror: string | undefined = undefined,
    /** Template whose current build supplies the kernel runtime (guest agent, node, busybox) copied into every base. */
    readonly runtimeTemplateId: string = 'base',
  ) {}

  get basesDir(): string {
    return join(this.dataDir, 'build-cache', 'bases');
  }

  /** Extracted runtimes, one per build of the runtime template. */
  get runtimesDir(): string {
    return join(this.dataDir, 'build-cache', 'runtime');
  }

  get debCacheDir(): string {
    return join(this.dataDir, 'cache', 'debs');
  }

  static from(env: HostAgentEnv): BaseLayersConfig {
    return new BaseLayersConfig(
      env.KILN_DATA_DIR,
      env.KILN_BUILD_REGISTRY,
      env.KILN_BUILD_REGISTRY_MIRROR,
      env.KILN_BUILD_INSECURE_REGISTRIES.split(',').map((entry) => entry.trim().toLowerCase()).filter(Boolean),
      env.KILN_BUILD_DEBIAN_MIRROR,
    );
  }
}
