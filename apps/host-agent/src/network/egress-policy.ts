import { NetworkSlotError } from './network.errors';
import { formatIpv4, parseIpv4 } from './slot-addressing';

/**
 * Per-sandbox egress rules, E2B style: destinations in `allowOut` are always reachable, those in `denyOut` are not,
 * everything else is. `allow_internet_access: false` is `denyOut: ['0.0.0.0/0']`. Entries are IPv4 addresses or
 * CIDR blocks. Platform isolation (other slots, the host, link-local) holds whatever the policy says.
 */
export interface EgressPolicy {
  allowOut?: readonly string[];
  denyOut?: readonly string[];
}

/** An entry that is not an IPv4 address or CIDR block, or too many entries. */
export class InvalidEgressRuleError extends NetworkSlotError {}

/** A domain-name entry: enforcing those needs a DNS/SNI-aware egress proxy, which the agent does not have yet. */
export class UnsupportedEgressRuleError extends NetworkSlotError {}

export const MAX_EGRESS_ENTRIES = 1_000;

export interface NormalisedEgressPolicy {
  allow: string[];
  deny: string[];
}

export function normaliseEgressPolicy(policy: EgressPolicy): NormalisedEgressPolicy {
  const allow = policy.allowOut ?? [];
  const deny = policy.denyOut ?? [];
  if (allow.length + deny.length > MAX_EGRESS_ENTRIES) {
    throw new InvalidEgressRuleError(`at most ${MAX_EGRESS_ENTRIES} egress entries are allowed`);
  }
  return { allow: dedupe(allow.map((e) => normaliseEntry(e, 'allowOut'))), deny: dedupe(deny.map((e) => normaliseEntry(e, 'denyOut'))) };
}

function normaliseEntry(entry: string, field: string): string {
  if (typeof entry !== 'string' || entry.length === 0 || entry.length > 253) {
    throw new InvalidEgressRuleError(`${field}: ${JSON.stringify(entry)} is not an IPv4 address or CIDR block`);
  }
  const match = /^(\d{1,3}(?:\.\d{1,3}){3})(?:\/(\d{1,2}))?$/.exec(entry.trim());
  if (!match) {
    if (/^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$/.test(entry) && /[A-Za-z]/.test(entry)) {
      throw new UnsupportedEgressRuleError(`${field}: domain names (${entry}) are not supported yet; use IP addresses or CIDR blocks`);
    }
    throw new InvalidEgressRuleError(`${field}: ${JSON.stringify(entry)} is not an IPv4 address or CIDR block`);
  }
  let address: number;
  try {
    address = parseIpv4(match[1]);
  } catch {
    throw new InvalidEgressRuleError(`${field}: ${JSON.stringify(entry)} is not an IPv4 address or CIDR block`);
  }
  const prefix = match[2] === undefined ? 32 : Number(match[2]);
  if (prefix > 32) throw new InvalidEgressRuleError(`${field}: ${JSON.stringify(entry)} has a prefix longer than /32`);
  // Host bits are cleared, as routers do: "10.1.2.3/8" means 10.0.0.0/8.
  const size = 2 ** (32 - prefix);
  return `${formatIpv4(Math.floor(address / size) * size)}/${prefix}`;
}

function dedupe(values: string[]): string[] {
  return [...new Set(values)];
}
