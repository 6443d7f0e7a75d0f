import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BaseLayersConfig } from './base-layers.config';
import {
  BaseLayerToolError,
  ImageNotFoundError,
  RegistryAuthError,
  RegistryUnreachableError,
  UnsupportedBaseImageError,
} from './base-layers.errors';
import { registryHost, type BaseSource } from './image-reference';
import type { BaseLayerImageConfig } from './base-layers.types';
import { runTool, ToolExitError } from './tool-runner';

type OciSource = Extract<BaseSource, { kind: 'oci' }>;
import type { RegistryCredentials } from './base-layers.types';
export type { RegistryCredentials };

const LOCAL_HOSTS = new Set(['127.0.0.1', 'localhost', '::1']);

/**
 * Pulls images with skopeo. Every call gets its own auth file (empty without credentials), so credentials never
 * appear on a command line and the host's own registry logins (~/.docker/config.json, containers/auth.json) are
 * never used for a user's build.
 */
export class OciPuller {
  constructor(
    private readonly config: BaseLayersConfig,
    private readonly source: OciSource,
    private readonly credentials: RegistryCredentials | undefined,
    private readonly authFile: string,
  ) {}

  /** Registry actually contacted: the mirror for the default registry when one is configured. */
  get pullRegistry(): string {
    return this.source.registry === this.config.defaultRegistry && this.config.registryMirror ? this.config.registryMirror : this.source.registry;
  }

  private get tlsVerify(): boolean {
    const registry = this.pullRegistry.toLowerCase();
    return !(LOCAL_HOSTS.has(registryHost(registry)) || this.config.insecureRegistries.includes(registry) || this.config.insecureRegistries.includes(registryHost(registry)));
  }

  private transportRef(pinnedDigest?: string): string {
    const name = `${this.pullRegistry}/${this.source.repository}`;
    const digest = pinnedDigest ?? this.source.digest;
    return `docker://${digest ? `${name}@${digest}` : `${name}:${this.source.tag ?? 'latest'}`}`;
  }

  async writeAuthFile(): Promise<void> {
    const auths: Record<string, { auth: string }> = {};
    if (this.credentials) {
      auths[this.pullRegistry] = { auth: Buffer.from(`${this.credentials.username}:${this.credentials.password}`).toString('base64') };
    }
    await writeFile(this.authFile, JSON.stringify({ auths }), { mode: 0o600 });
  }

  /** The digest of the manifest the reference names now (the cache key's input). */
  async manifestDigest(signal: AbortSignal): Promise<string> {
    if (this.source.digest) return this.source.digest;
    const args = ['inspect', '--no-tags', '--authfile', this.authFile, `--tls-verify=${this.tlsVerify}`, '--format', '{{.Digest}}', this.transportRef()];
    const { stdout } = await this.skopeo(args, signal);
    const digest = stdout.trim();
    if (!/^sha256:[a-f0-9]{64}$/.test(digest)) throw new BaseLayerToolError(`skopeo inspect ${this.source.image}: unexpected digest ${JSON.stringify(digest)}`);
    return digest;
  }

  /** Copies the image (this host's platform out of a multi-arch list) into an OCI layout at `layoutDir`, tag `image`. */
  async copyTo(layoutDir: string, digest: string, signal: AbortSignal, log: (line: string) => void): Promise<void> {
    const args = [
      'copy', '--authfile', this.authFile, `--src-tls-verify=${this.tlsVerify}`, '--override-os', 'linux',
      this.transportRef(digest), `oci:${layoutDir}:image`,
    ];
    await this.skopeo(args, signal, log);
  }

  private async skopeo(args: string[], signal: AbortSignal, log?: (line: string) => void) {
    try {
      return await runTool('skopeo', args, { signal, onLine: log, timeoutMs: 60 * 60_000, env: { PATH: process.env.PATH, HOME: '/nonexistent' } });
    } catch (error) {
      throw classifySkopeoError(error, this.source.image, this.pullRegistry);
    }
  }
}

/** Tells the user's mistakes (unknown image, refused credentials, unreachable registry) from this host's failures. */
export function classifySkopeoError(error: unknown, image: string, registry: string): unknown {
  if (!(error instanceof ToolExitError)) return error;
  const text = error.stderr;
  const detail = skopeoMessage(text);
  if (/unauthorized|authentication required|access to the resource is denied|invalid username\/password|status 401|status 403|denied:/i.test(text)) {
    return new RegistryAuthError(`${image}: registry ${registry} refused the credentials${detail ? ` (${detail})` : ''}`);
  }
  if (/manifest unknown|name unknown|not found|repository name not known|does not exist|no image found|choosing an image from manifest list/i.test(text)) {
    return new ImageNotFoundError(`${image}: no such image on ${registry}${detail ? ` (${detail})` : ''}`);
  }
  if (/no such host|connection refused|i\/o timeout|dial tcp|TLS handshake|x509|server gave HTTP response|network is unreachable|no route to host|pinging container registry|EOF/i.test(text)) {
    return new RegistryUnreachableError(`${image}: registry ${registry} is unreachable${detail ? ` (${detail})` : ''}`);
  }
  if (/invalid reference format|unsupported|manifest type/i.test(text)) {
    return new UnsupportedBaseImageError(`${image}: ${detail || 'unsupported image'}`);
  }
  return error;
}

/** The last line of skopeo's stderr without its logrus frame and the "Error parsing image name" preamble. */
function skopeoMessage(stderr: string): string {
  const last = stderr.trim().split('\n').slice(-1)[0] ?? '';
  const framed = /^time="[^"]*" level=\w+ msg="(.*)"$/.exec(last);
  const message = framed ? framed[1].replace(/\\"/g, '"') : last;
  return message.replace(/^Error (parsing image name|initializing source) "[^"]*": /, '').slice(0, 500);
}

/** OCI image config fields the template carries (the image spec's `config`). */
interface OciImageConfigFile {
  architecture?: string;
  os?: string;
  config?: { Env?: string[]; WorkingDir?: string; User?: string; Cmd?: string[]; Entrypoint?: string[] };
  rootfs?: { diff_ids?: string[] };
}

/** The manifest digest and image config of the one image in an OCI layout (as `skopeo copy` wrote it). */
export async function readOciLayout(layoutDir: string): Promise<{ manifestDigest: string; config: BaseLayerImageConfig; layers: number }> {
  const blob = async (digest: string) => {
    const match = /^sha256:([a-f0-9]{64})$/.exec(digest);
    if (!match) throw new UnsupportedBaseImageError(`image blob ${digest} is not a sha256 digest`);
    return JSON.parse(await readFile(join(layoutDir, 'blobs', 'sha256', match[1]), 'utf8')) as Record<string, unknown>;
  };
  const index = JSON.parse(await readFile(join(layoutDir, 'index.json'), 'utf8')) as { manifests?: { digest: string }[] };
  const manifestDigest = index.manifests?.[0]?.digest;
  if (!manifestDigest) throw new BaseLayerToolError(`${layoutDir}: OCI index without a manifest`);
  const manifest = (await blob(manifestDigest)) as { config?: { digest: string }; layers?: unknown[] };
  if (!manifest.config?.digest) throw new UnsupportedBaseImageError('the image manifest has no config');
  const configFile = (await blob(manifest.config.digest)) as OciImageConfigFile;
  if (configFile.os && configFile.os !== 'linux') throw new UnsupportedBaseImageError(`the image is for ${configFile.os}, not linux`);
  if (configFile.architecture && configFile.architecture !== 'amd64') {
    throw new UnsupportedBaseImageError(`the image is for ${configFile.architecture}; Kiln's VMs are amd64`);
  }
  return { manifestDigest, config: imageConfig(configFile), layers: manifest.layers?.length ?? 0 };
}

export function imageConfig(file: OciImageConfigFile): BaseLayerImageConfig {
  const config = file.config ?? {};
  const env: Record<string, string> = {};
  for (const entry of config.Env ?? []) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  const result: BaseLayerImageConfig = { env };
  if (config.WorkingDir) result.workdir = config.WorkingDir;
  if (config.User) result.user = config.User;
  if (config.Cmd?.length) result.cmd = [...config.Cmd];
  if (config.Entrypoint?.length) result.entrypoint = [...config.Entrypoint];
  return result;
}

/** Unpacks the layout's image into `rootfsDir`: layers in order, whiteouts applied, owners kept (we are root). */
export async function unpackOciLayout(layoutDir: string, rootfsDir: string, signal: AbortSignal): Promise<void> {
  try {
    await runTool('umoci', ['raw', 'unpack', '--image', `${layoutDir}:image`, rootfsDir], { signal, timeoutMs: 60 * 60_000 });
  } catch (error) {
    if (error instanceof ToolExitError && /unsupported|media ?type/i.test(error.stderr)) {
      throw new UnsupportedBaseImageError(`the image cannot be unpacked: ${error.stderr.trim().split('\n').slice(-1)[0]}`);
    }
    throw error;
  }
}
