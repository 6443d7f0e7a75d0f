import { formatIpv4, parseIpv4 as parseIpv4OrUndefined } from '@kiln/contracts';
import { NetworkConfigError } from './network.errors';

export { formatIpv4 };

/**
 * The slot pool is one IPv4 block carved into /31 point-to-point links, one per slot index:
 * the even address sits on the host end of the slot's veth, the odd one on the namespace end (the slot's
 * hostAddress, which is DNATed to the guest). Addressing is a pure function of the index, which is what lets a
 * restarted agent re-derive every live slot from nothing but its index.
 */
export interface SlotPool {
  cidr: string;
  network: number;
  prefixLength: number;
  /** How many /31 links fit in the block. */
  capacity: number;
}

export interface SlotAddresses {
  /** Address of the host end of the veth (source of host-initiated connections into the slot). */
  hostSideIp: string;
  /** Address of the namespace end; the host and proxy connect here and reach the guest. */
  hostAddress: string;
}

export const SLOT_LINK_PREFIX = 31;

/** The contract's IPv4 parser, throwing the host's configuration error for what is not an address. */
export function parseIpv4(text: string): number {
  const value = parseIpv4OrUndefined(text);
  if (value === undefined) throw new NetworkConfigError(`not an IPv4 address: ${JSON.stringify(text)}`);
  return value;
}

export function parseSlotPool(cidr: string): SlotPool {
  const match = /^([^/]+)\/(\d{1,2})$/.exec(cidr);
  if (!match) throw new NetworkConfigError(`slot pool must be an IPv4 CIDR, got ${JSON.stringify(cidr)}`);
  const prefixLength = Number(match[2]);
  if (prefixLength < 8 || prefixLength > 30) {
    throw new NetworkConfigError(`slot pool prefix must be between /8 and /30, got /${prefixLength}`);
  }
  const network = parseIpv4(match[1]);
  const size = 2 ** (32 - prefixLength);
  if (network % size !== 0) {
    throw new NetworkConfigError(`slot pool ${cidr} has host bits set`);
  }
  return { cidr, network, prefixLength, capacity: size / 2 };
}

export function slotAddresses(pool: SlotPool, index: number): SlotAddresses {
  if (!Number.isInteger(index) || index < 0 || index >= pool.capacity) {
    throw new NetworkConfigError(`slot index ${index} is outside the pool ${pool.cidr} (capacity ${pool.capacity})`);
  }
  const base = pool.network + index * 2;
  return { hostSideIp: formatIpv4(base), hostAddress: formatIpv4(base + 1) };
}

/** True when the two CIDR blocks share at least one address. */
export function cidrsOverlap(a: { network: number; prefixLength: number }, b: { network: number; prefixLength: number }): boolean {
  const shorter = Math.min(a.prefixLength, b.prefixLength);
  const size = 2 ** (32 - shorter);
  return Math.floor(a.network / size) === Math.floor(b.network / size);
}
