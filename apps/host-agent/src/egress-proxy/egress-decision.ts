import { domainMatches } from '@kiln/contracts';
import type { AppliedEgressPolicy, PlatformFloor } from '../network';
import { anyBlockContains, parseIpv4Block, type Ipv4Block } from '../network/platform-floor';

export interface Destination {
  address: string;
  port: number;
}

/** Why a redirected connection is let through (`allow-*`) or closed (`refuse-*`); logged and counted as is. */
export type EgressVerdict = 'allow-domain' | 'allow-address' | 'allow-default' | 'refuse-floor' | 'refuse-denied';

/**
 * The sandbox's policy in the form the proxy checks per connection (CIDRs parsed once per policy, not per
 * connection: policies are replaced whole, so the parsed form is cached by identity).
 */
const parsed = new WeakMap<AppliedEgressPolicy, { allow: Ipv4Block[]; deny: Ipv4Block[] }>();

function blocksOf(policy: AppliedEgressPolicy) {
  let blocks = parsed.get(policy);
  if (!blocks) {
    blocks = { allow: policy.allowCidrs.map(parseIpv4Block), deny: policy.denyCidrs.map(parseIpv4Block) };
    parsed.set(policy, blocks);
  }
  return blocks;
}

/**
 * True when the verdict depends on the name the guest sends: the address alone would be denied (in a deny block
 * and in no allow block) and only an allowed domain can open it. Otherwise the proxy connects without reading.
 */
export function needsName(policy: AppliedEgressPolicy, destination: Destination): boolean {
  const { allow, deny } = blocksOf(policy);
  return !anyBlockContains(allow, destination.address) && anyBlockContains(deny, destination.address);
}

/**
 * E2B's semantics, as the proxy applies them to a redirected connection: the platform floor first (the proxy's own
 * connection leaves from the host, past the slot's rules); then a name matching an allowOut domain allows; then the
 * address rules (allowOut CIDRs allow, denyOut CIDRs refuse, anything else is allowed).
 */
export function decideEgress(
  policy: AppliedEgressPolicy,
  floor: PlatformFloor,
  destination: Destination,
  name: string | undefined,
): EgressVerdict {
  if (floor.blocks(destination.address)) return 'refuse-floor';
  if (name !== undefined && policy.allowDomains.some((pattern) => domainMatches(pattern, name))) return 'allow-domain';
  const { allow, deny } = blocksOf(policy);
  if (anyBlockContains(allow, destination.address)) return 'allow-address';
  if (anyBlockContains(deny, destination.address)) return 'refuse-denied';
  return 'allow-default';
}
