import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { Injectable } from '@nestjs/common';
import { GatewayEnv } from '@kiln/config';
import { httpsAgentOptions, internalTlsOf } from '@kiln/config/internal-tls';
import { Agent as UndiciAgent, fetch as undiciFetch } from 'undici';

/**
 * The gateway's connections to host agents' sandbox-traffic proxies. A host whose proxyUrl is https speaks internal
 * mTLS: the gateway presents its certificate (spiffe://kiln/gateway) and accepts only a host agent's
 * (spiffe://kiln/host-agent, from the internal CA). Without KILN_INTERNAL_* (outside production only) an https
 * proxyUrl cannot be reached: the agent would refuse a gateway without a certificate anyway.
 */
@Injectable()
export class HostProxyConnections {
  private readonly plain = new HttpAgent({ keepAlive: true, maxSockets: Infinity });
  private readonly secure?: HttpsAgent;
  /** The same trust and certificate for fetch (undici), which takes no node Agent. */
  private readonly secureDispatcher?: UndiciAgent;

  constructor(env: GatewayEnv) {
    const internalTls = internalTlsOf(env);
    if (!internalTls) return;
    const options = httpsAgentOptions(internalTls, 'host-agent');
    this.secure = new HttpsAgent({ ...options, keepAlive: true, maxSockets: Infinity });
    this.secureDispatcher = new UndiciAgent({ connect: { ca: options.ca, cert: options.cert, key: options.key, checkServerIdentity: options.checkServerIdentity } });
  }

  /** Whether this gateway can speak a proxyUrl's scheme (https needs its internal certificate). */
  canReach(proxyUrl: string): boolean {
    return !proxyUrl.startsWith('https:') || !!this.secure;
  }

  /** The agent for a proxyUrl's scheme (http-proxy picks http or https by the target, and the agent must match). */
  agentFor(proxyUrl: string): HttpAgent {
    if (!proxyUrl.startsWith('https:')) return this.plain;
    if (!this.secure) throw new Error(`${proxyUrl} needs internal mTLS, but KILN_INTERNAL_CA_FILE/CERT_FILE/KEY_FILE are not set`);
    return this.secure;
  }

  /** fetch through the right connections for `url`'s host proxy. */
  fetch(url: URL, init: { headers: Record<string, string>; signal: AbortSignal }): Promise<{ ok: boolean; status: number; body: { cancel(): Promise<void> } | null; json(): Promise<unknown> }> {
    if (url.protocol !== 'https:') return fetch(url, init);
    if (!this.secureDispatcher) return Promise.reject(new Error(`${url.origin} needs internal mTLS, but KILN_INTERNAL_* are not set`));
    return undiciFetch(url, { ...init, dispatcher: this.secureDispatcher });
  }

  /**
   * Ends every connection. Called by SandboxTrafficProxy once its drain is over, not from a shutdown hook of its own:
   * Nest runs the hooks of one module together, and closing here would cut streams the proxy is still draining.
   */
  async close(): Promise<void> {
    this.plain.destroy();
    this.secure?.destroy();
    await this.secureDispatcher?.close();
  }
}
