import {
  EgressRuleError,
  normaliseEgressPolicy,
  splitEgressPolicy,
  type EgressPolicy,
} from '@kiln/contracts';
import { InvalidEgressPolicyError } from './network.errors';

/**
 * A sandbox's egress policy as the host enforces it: the contract's normalised `EgressPolicy` (the control plane
 * normalised it; the host only checks) and its split into what nftables holds (address sets) and what the egress
 * proxy holds (domain names).
 */
export interface AppliedEgressPolicy {
  policy: EgressPolicy;
  allowCidrs: string[];
  allowDomains: string[];
  denyCidrs: string[];
}

export const OPEN_EGRESS_POLICY: AppliedEgressPolicy = Object.freeze({
  policy: Object.freeze({ allowOut: [], denyOut: [] }) as unknown as EgressPolicy,
  allowCidrs: [],
  allowDomains: [],
  denyCidrs: [],
}) as AppliedEgressPolicy;

/**
 * What a slot enforces from the moment it is made (or reset) until a sandbox's own policy is applied: nothing leaves
 * it (DNS to the platform's resolvers aside, which the chain accepts before any policy). A sandbox that runs before
 * its rules are in place is therefore only ever more restricted than it asked to be.
 */
export const CLOSED_EGRESS_POLICY: AppliedEgressPolicy = Object.freeze({
  policy: Object.freeze({ allowOut: [], denyOut: ['0.0.0.0/0'] }) as unknown as EgressPolicy,
  allowCidrs: [],
  allowDomains: [],
  denyCidrs: ['0.0.0.0/0'],
}) as AppliedEgressPolicy;

/**
 * Checks a policy received from the control plane. It must already be normalised (normalising is idempotent, so a
 * normalised policy is its own normal form): the host never reinterprets rules, so what it reports back as applied
 * is exactly what it was given. Throws InvalidEgressPolicyError otherwise.
 */
export function checkEgressPolicy(input: Partial<EgressPolicy> | undefined): AppliedEgressPolicy {
  const given: EgressPolicy = { allowOut: [...(input?.allowOut ?? [])], denyOut: [...(input?.denyOut ?? [])] };
  let normalised: EgressPolicy;
  try {
    normalised = normaliseEgressPolicy(given);
  } catch (error) {
    if (error instanceof EgressRuleError) throw new InvalidEgressPolicyError(error.message);
    throw error;
  }
  for (const field of ['allowOut', 'denyOut'] as const) {
    if (normalised[field].length !== given[field].length || normalised[field].some((entry, i) => entry !== given[field][i])) {
      const odd = given[field].find((entry) => !normalised[field].includes(entry)) ?? '(a duplicate entry)';
      throw new InvalidEgressPolicyError(`network.${field}: ${JSON.stringify(odd)} is not in normal form (normaliseEgressPolicy)`);
    }
  }
  return { policy: normalised, ...splitEgressPolicy(normalised) };
}
