import { isIPv4 } from 'node:net';
import { EgressProxyConfigError } from './egress-proxy.errors';

export const EGRESS_PROXY_OPTIONS = Symbol('EGRESS_PROXY_OPTIONS');

export interface EgressProxyOptions {
  /**
   * Address the proxy listens on. The host redirects a slot's web traffic to the slot veth's own host address, so
   * this must cover those (0.0.0.0 does); connections from anything but a leased slot are refused.
   */
  host: string;
  /** Port the host redirects to; the network pool's `egressProxyPort` must be the same. */
  port: number;
  /** Most bytes read from the guest while looking for the name (Host header, TLS ClientHello). */
  peekBytes: number;
  /** How long the guest gets to send them. */
  peekTimeoutMs: number;
  /** How long connecting to the original destination may take. */
  connectTimeoutMs: number;
}

export const DEFAULT_EGRESS_PROXY_OPTIONS: Omit<EgressProxyOptions, 'port'> = {
  host: '0.0.0.0',
  peekBytes: 16_384,
  peekTimeoutMs: 5_000,
  connectTimeoutMs: 10_000,
};

export function resolveEgressProxyOptions(partial: Partial<EgressProxyOptions> & Pick<EgressProxyOptions, 'port'>): EgressProxyOptions {
  const options = { ...DEFAULT_EGRESS_PROXY_OPTIONS, ...Object.fromEntries(Object.entries(partial).filter(([, v]) => v !== undefined)) } as EgressProxyOptions;
  if (!isIPv4(options.host)) throw new EgressProxyConfigError(`host must be an IPv4 address, got ${JSON.stringify(options.host)}`);
  if (!Number.isInteger(options.port) || options.port < 1 || options.port > 65535) {
    throw new EgressProxyConfigError(`port must be a port number, got ${options.port}`);
  }
  for (const key of ['peekBytes', 'peekTimeoutMs', 'connectTimeoutMs'] as const) {
    if (!Number.isInteger(options[key]) || options[key] < 1) throw new EgressProxyConfigError(`${key} must be a positive integer`);
  }
  return options;
}
