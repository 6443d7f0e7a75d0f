import { MAX_EGRESS_RULES } from '@kiln/contracts';
import { checkEgressPolicy } from './egress-policy';
import { InvalidEgressPolicyError } from './network.errors';

describe('checkEgressPolicy', () => {
  it('accepts a normalised policy as is and splits it for nftables and the egress proxy', () => {
    const policy = { allowOut: ['198.51.100.7/32', 'example.com', '*.example.org'], denyOut: ['0.0.0.0/0'] };
    expect(checkEgressPolicy(policy)).toEqual({
      policy,
      allowCidrs: ['198.51.100.7/32'],
      allowDomains: ['example.com', '*.example.org'],
      denyCidrs: ['0.0.0.0/0'],
    });
    expect(checkEgressPolicy(undefined)).toMatchObject({ policy: { allowOut: [], denyOut: [] }, allowDomains: [] });
    expect(checkEgressPolicy({})).toMatchObject({ policy: { allowOut: [], denyOut: [] } });
  });

  it('refuses entries that are not in normal form rather than reinterpreting them', () => {
    for (const allowOut of [['198.51.100.7'], ['10.1.2.3/8'], ['Example.COM'], ['198.51.100.7/32', '198.51.100.7/32']]) {
      expect(() => checkEgressPolicy({ allowOut })).toThrow(InvalidEgressPolicyError);
    }
  });

  it('refuses invalid entries and oversized policies with the contract message', () => {
    for (const bad of ['', '1.2.3', '1.2.3.4/33', '256.0.0.1', 'fe80::1', '1.2.3.4; drop', 'example.com']) {
      expect(() => checkEgressPolicy({ denyOut: [bad] })).toThrow(InvalidEgressPolicyError);
    }
    expect(() => checkEgressPolicy({ allowOut: ['*'] })).toThrow(/matches every name/);
    const many = Array.from({ length: MAX_EGRESS_RULES + 1 }, (_, i) => `10.0.${i >> 8}.${i & 255}/32`);
    expect(() => checkEgressPolicy({ denyOut: many })).toThrow(InvalidEgressPolicyError);
  });
});
