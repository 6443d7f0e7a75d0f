import {
  InvalidEgressRuleError,
  MAX_EGRESS_ENTRIES,
  normaliseEgressPolicy,
  UnsupportedEgressRuleError,
} from './egress-policy';

describe('normaliseEgressPolicy', () => {
  it('turns addresses into /32s, clears host bits and drops duplicates', () => {
    expect(
      normaliseEgressPolicy({ allowOut: ['8.8.8.8', '8.8.8.8/32', '10.1.2.3/8'], denyOut: ['0.0.0.0/0', '192.0.2.77/30'] }),
    ).toEqual({ allow: ['8.8.8.8/32', '10.0.0.0/8'], deny: ['0.0.0.0/0', '192.0.2.76/30'] });
    expect(normaliseEgressPolicy({})).toEqual({ allow: [], deny: [] });
  });

  it('names domain entries as unsupported rather than invalid', () => {
    expect(() => normaliseEgressPolicy({ allowOut: ['example.com'] })).toThrow(UnsupportedEgressRuleError);
    expect(() => normaliseEgressPolicy({ allowOut: ['*.example.com'] })).toThrow(UnsupportedEgressRuleError);
  });

  it('rejects malformed entries and oversized policies', () => {
    for (const bad of ['', '1.2.3', '1.2.3.4/33', '256.0.0.1', '1.2.3.4/-1', 'fe80::1', '1.2.3.4; drop']) {
      expect(() => normaliseEgressPolicy({ denyOut: [bad] })).toThrow(InvalidEgressRuleError);
    }
    const many = Array.from({ length: MAX_EGRESS_ENTRIES + 1 }, (_, i) => `10.0.${i >> 8}.${i & 255}`);
    expect(() => normaliseEgressPolicy({ denyOut: many })).toThrow(InvalidEgressRuleError);
  });
});
