import { NetworkConfigError } from './network.errors';
import { isIP, isIPv4 } from 'node:net';
import { parseIpv4Block } from './platform-floor';
import { parseSlotPool, type SlotPool } from './slot-addressing';

export const NETWORK_OPTIONS = Symbol('NETWORK_OPTIONS');

export interface NetworkOptions {
  /**
   * Prefix of everything the pool creates: namespaces `<prefix>-slot-<n>`, host veths `<prefix>-v<n>` and the host
   * nftables table `<prefix>`. Reconcile and destroyAll only ever touch names with this prefix, so two pools with
   * different prefixes (e.g. tests next to a running agent) never interfere. At most 8 characters: interface names
   * are limited to 15.
   */
  namePrefix: string;
  /**
   * IPv4 block carved into one /31 per slot. Must not be used anywhere else: the pool refuses to start when a host
   * address or route outside its own veths overlaps it. Default 10.200.0.0/16 (32768 slots).
   */
  slotCidr: string;
  /** Upper bound on slots alive at once (leased + free + being prepared). Default 1024, or fewer if the block is smaller. */
  maxSlots: number;
  /** Free slots kept ready ahead of demand; the pool refills in the background after each acquire. */
  prefill: number;
  /** Released slots kept for reuse beyond which further released slots are destroyed. */
  maxIdle: number;
  /** Time limit for each ip/nft/sysctl invocation. */
  commandTimeoutMs: number;
  /** Set net.ipv4.ip_forward=1 on the host at init (egress NAT needs it). */
  enableHostForwarding: boolean;
  /**
   * The platform's DNS resolvers (KILN_GUEST_NAMESERVERS): guests may send port 53 to these and to nothing else,
   * whatever their egress policy and even when they sit in a floor range. IPv6 entries are ignored (slots are IPv4).
   */
  dnsResolvers: readonly string[];
  /** IPv4 CIDRs the operator takes out of the platform floor (KILN_EGRESS_OPEN_RANGES); the slot pool stays closed. */
  openRanges: readonly string[];
  /**
   * Host port of the egress proxy that enforces domain rules (TCP 80/443 of sandboxes with domain rules is
   * redirected there). 0: no proxy, and policies with domain rules are refused.
   */
  egressProxyPort: number;
}

export const DEFAULT_NETWORK_OPTIONS: NetworkOptions = {
  namePrefix: 'kiln',
  slotCidr: '10.200.0.0/16',
  maxSlots: 1024,
  prefill: 4,
  maxIdle: 32,
  commandTimeoutMs: 10_000,
  enableHostForwarding: true,
  dnsResolvers: [],
  openRanges: [],
  egressProxyPort: 0,
};

export interface ResolvedNetworkOptions extends NetworkOptions {
  pool: SlotPool;
}

export function resolveNetworkOptions(partial: Partial<NetworkOptions> = {}): ResolvedNetworkOptions {
  const options: NetworkOptions = { ...DEFAULT_NETWORK_OPTIONS, ...stripUndefined(partial) };
  if (!/^[a-z][a-z0-9]{0,7}$/.test(options.namePrefix)) {
    throw new NetworkConfigError(
      `namePrefix must be 1-8 lowercase letters/digits starting with a letter, got ${JSON.stringify(options.namePrefix)}`,
    );
  }
  const pool = parseSlotPool(options.slotCidr);
  // The default cap shrinks to fit a small slot block; an explicit one must fit or is an error.
  if (partial.maxSlots === undefined) options.maxSlots = Math.min(options.maxSlots, pool.capacity);
  for (const key of ['maxSlots', 'prefill', 'maxIdle', 'commandTimeoutMs'] as const) {
    if (!Number.isInteger(options[key]) || options[key] < 0) {
      throw new NetworkConfigError(`${key} must be a non-negative integer, got ${options[key]}`);
    }
  }
  if (options.maxSlots < 1) throw new NetworkConfigError('maxSlots must be at least 1');
  if (options.maxSlots > pool.capacity) {
    throw new NetworkConfigError(`maxSlots ${options.maxSlots} exceeds the ${pool.capacity} slots that fit in ${pool.cidr}`);
  }
  // 5 digits of index keep `<prefix>-v<n>` within the 15-character interface name limit.
  if (options.maxSlots > 99_999) throw new NetworkConfigError('maxSlots must be at most 99999');
  if (options.prefill > options.maxSlots) {
    throw new NetworkConfigError(`prefill ${options.prefill} exceeds maxSlots ${options.maxSlots}`);
  }
  const badResolver = options.dnsResolvers.find((r) => isIP(r) === 0);
  if (badResolver !== undefined) throw new NetworkConfigError(`dnsResolvers: ${JSON.stringify(badResolver)} is not an IP address`);
  const openRanges = options.openRanges.map((r) => parseIpv4Block(r).cidr);
  if (!Number.isInteger(options.egressProxyPort) || options.egressProxyPort < 0 || options.egressProxyPort > 65535) {
    throw new NetworkConfigError(`egressProxyPort must be 0 (none) or a port number, got ${options.egressProxyPort}`);
  }
  return { ...options, openRanges, dnsResolvers: options.dnsResolvers.filter((r) => isIPv4(r)), pool };
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
