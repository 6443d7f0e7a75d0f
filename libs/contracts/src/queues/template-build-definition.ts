/**
 * A template build as the gateway validated and normalised it (E2B TemplateBuildStartV2), stored in
 * `template_builds.definition` and executed by the template builder. Exactly one of `fromTemplate` (with
 * `baseTemplate`, its resolution) or `fromImage` is set.
 */
export interface TemplateBuildDefinition {
  /** E2B `fromTemplate` as the user wrote it (alias, id or `name:tag`); kept for display. */
  fromTemplate?: string;
  /** `fromTemplate` resolved by the gateway when the build was started: the base the build starts from. */
  baseTemplate?: TemplateBuildBaseRef;
  /** E2B `fromImage`: `debian:<suite>` / `ubuntu:<suite>` or an OCI image reference. */
  fromImage?: string;
  /** E2B `fromImageRegistry` of type `registry` (the only type Kiln accepts), for a private registry. */
  fromImageRegistry?: TemplateBuildRegistryCredentials;
  /** E2B `force` (skipCache on the whole template): rebuild every step. */
  force: boolean;
  steps: TemplateBuildStepDefinition[];
  startCmd?: string;
  readyCmd?: string;
}

export interface TemplateBuildBaseRef {
  templateId: string;
  /** The base's build (`template_builds.id`). */
  buildId: string;
  /** Its host build id (`template_builds.content_hash`): the directory hosts hold it under. */
  hostBuildId: string;
}

export interface TemplateBuildRegistryCredentials {
  username: string;
  password: string;
}

export type TemplateBuildStepType = 'RUN' | 'COPY' | 'ENV' | 'WORKDIR' | 'USER';

export interface TemplateBuildStepDefinition {
  /** Upper case, as E2B sends it. */
  type: TemplateBuildStepType;
  /** RUN [command, user?], COPY [src, dest, user?, mode?], ENV [k1, v1, ...], WORKDIR [path], USER [name]. */
  args: string[];
  /** COPY: E2B's filesHash; the archive is `files/<teamId>/<filesHash>` in the artifact store. */
  filesHash?: string;
  /** COPY: sha256 of that archive as stored (`template_files.sha256`), checked by the host before it is used. */
  filesSha256?: string;
  /** E2B step `force` (skipCache from this step on). */
  force: boolean;
}

/** What a ready build's sandboxes start with (`template_builds.runtime`). */
export interface TemplateBuildRuntime {
  envs: Record<string, string>;
  workdir: string;
  user: string;
}

/** One built file (`template_builds.artifacts[]`), as stored under `templates/<templateId>/<buildId>/<name>`. */
export interface TemplateBuildArtifact {
  name: string;
  bytes: number;
  sha256: string;
}

export type TemplateBuildLogLevel = 'debug' | 'info' | 'warn' | 'error';

/**
 * E2B's BuildLogEntry: one row of `template_build_logs` and one NATS message on
 * `templateBuildLogsSubject(buildId)`. `step` follows BuildStatusReason.step ("0" base, "1".."N", "N+1" finalize).
 */
export interface TemplateBuildLogEntry {
  /** Position in the build's log, from 0. */
  seq: number;
  /** ISO 8601. */
  timestamp: string;
  level: TemplateBuildLogLevel;
  message: string;
  step?: string;
}
