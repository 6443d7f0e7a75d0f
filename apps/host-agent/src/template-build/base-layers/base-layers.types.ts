/** What a base image says about how its processes run; the template starts from these (ENV, WORKDIR, USER, CMD). */
export interface BaseLayerImageConfig {
  /** The image's Env, by name (later duplicates win, as in the runtime). */
  env: Record<string, string>;
  workdir?: string;
  /** The image's User as written (`name`, `uid`, `name:group` or `uid:gid`). */
  user?: string;
  cmd?: string[];
  entrypoint?: string[];
}

/** A base layer ready to build on. */
export interface PreparedBaseLayer {
  /** Content key: the same image (manifest digest) or suite with the same Kiln runtime gives the same key. */
  key: string;
  /** Raw ext4 image, read-only (mode 0444, shared by every build on this base: copy or layer on top of it). */
  rootfsPath: string;
  config: BaseLayerImageConfig;
}

export type RegistryCredentials = { username: string; password: string };
