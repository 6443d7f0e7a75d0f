import { formatIpv4, parseIpv4 } from '@kiln/contracts';
import { NetworkConfigError } from './network.errors';

/**
 * Destinations no sandbox reaches whatever its egress policy says: the platform floor. Enforced twice, by the slot
 * namespace's `egress` chain (before the per-sandbox sets) and, for connections the egress proxy makes from the
 * host on a sandbox's behalf, by the proxy in code (`PlatformFloor.blocks`).
 */
export const SPECIAL_PURPOSE_RANGES: readonly string[] = Object.freeze([
  '0.0.0.0/8', // "this network"
  '10.0.0.0/8', // RFC 1918
  '100.64.0.0/10', // carrier-grade NAT (RFC 6598): provider-internal networks
  '127.0.0.0/8', // loopback
  '169.254.0.0/16', // link-local, cloud metadata services
  '172.16.0.0/12', // RFC 1918
  '192.168.0.0/16', // RFC 1918
  '224.0.0.0/4', // multicast
  '240.0.0.0/4', // reserved, and the limited broadcast 255.255.255.255
]);

export interface Ipv4Block {
  cidr: string;
  network: number;
  prefixLength: number;
}

/** Parses `a.b.c.d/n` (or a bare address, as /32); host bits must be clear. */
export function parseIpv4Block(text: string): Ipv4Block {
  const match = /^(\d{1,3}(?:\.\d{1,3}){3})(?:\/(\d{1,2}))?$/.exec(text.trim());
  const network = match ? parseIpv4(match[1]) : undefined;
  const prefixLength = match?.[2] === undefined ? 32 : Number(match[2]);
  if (network === undefined || prefixLength > 32) throw new NetworkConfigError(`not an IPv4 CIDR block: ${JSON.stringify(text)}`);
  const size = 2 ** (32 - prefixLength);
  if (network % size !== 0) throw new NetworkConfigError(`${text} has host bits set`);
  return { cidr: `${formatIpv4(network)}/${prefixLength}`, network, prefixLength };
}

/** The block an interface address sits in (`192.0.2.7`/24 -> 192.0.2.0/24). */
export function subnetOf(address: string, prefixLength: number): string {
  const value = parseIpv4(address);
  if (value === undefined) throw new NetworkConfigError(`not an IPv4 address: ${JSON.stringify(address)}`);
  const size = 2 ** (32 - prefixLength);
  return `${formatIpv4(Math.floor(value / size) * size)}/${prefixLength}`;
}

export function blockContains(block: Ipv4Block, address: number): boolean {
  const size = 2 ** (32 - block.prefixLength);
  return Math.floor(address / size) * size === block.network;
}

export function anyBlockContains(blocks: readonly Ipv4Block[], address: string): boolean {
  const value = parseIpv4(address);
  return value !== undefined && blocks.some((b) => blockContains(b, value));
}

export interface PlatformFloorSpec {
  /** The slot pool: other sandboxes. Never opened, not even by the operator. */
  slotPool: string;
  /** IPv4 subnets of the host's own interfaces, read once at agent start. */
  hostNetworks: readonly string[];
  /** Operator-opened ranges (KILN_EGRESS_OPEN_RANGES), taken out of the floor (special ranges and host networks). */
  openRanges: readonly string[];
}

/**
 * The floor as rendered into nftables and as checked by the egress proxy: one owner, so the two enforcement points
 * cannot disagree. `closed` are blocked unless in `open`; `slotPool` is blocked regardless.
 */
export class PlatformFloor {
  readonly slotPool: Ipv4Block;
  readonly closed: readonly Ipv4Block[];
  readonly open: readonly Ipv4Block[];

  constructor(readonly spec: PlatformFloorSpec) {
    this.slotPool = parseIpv4Block(spec.slotPool);
    this.closed = [...SPECIAL_PURPOSE_RANGES, ...spec.hostNetworks].map(parseIpv4Block);
    this.open = spec.openRanges.map(parseIpv4Block);
  }

  /** True when no sandbox may reach `address` (an IPv4 address in dotted form; anything else is blocked too). */
  blocks(address: string): boolean {
    const value = parseIpv4(address);
    if (value === undefined) return true;
    if (blockContains(this.slotPool, value)) return true;
    return this.closed.some((b) => blockContains(b, value)) && !this.open.some((b) => blockContains(b, value));
  }
}
