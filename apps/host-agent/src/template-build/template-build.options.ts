export const TEMPLATE_BUILD_OPTIONS = Symbol('TEMPLATE_BUILD_OPTIONS');

export interface TemplateBuildOptions {
  /** KILN_DATA_DIR: the layer cache lives in <dataDir>/build-cache, results in <dataDir>/templates. */
  dataDir: string;
  /** Builds that run at once on this host (each holds one build VM and one network slot); more wait their turn. */
  concurrency: number;
  /** Upper bound on one RUN or COPY in its build VM. */
  stepTimeoutMs: number;
  /** Cold boot of a build VM until its guest agent answers. */
  bootTimeoutMs: number;
  /** The resolvers build VMs get (KILN_GUEST_NAMESERVERS). */
  guestNameservers: string[];
  /** The template whose current build is the Kiln guest runtime: its kernel and initramfs boot every build VM. */
  runtimeTemplateId: string;
}
