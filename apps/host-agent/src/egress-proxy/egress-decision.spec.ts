import { checkEgressPolicy, PlatformFloor } from '../network';
import { decideEgress, needsName } from './egress-decision';

const floor = new PlatformFloor({ slotPool: '10.200.0.0/16', hostNetworks: ['192.0.2.0/24'], openRanges: ['10.213.77.0/24'] });
const at = (address: string, port = 443) => ({ address, port });

describe('egress decision', () => {
  const policy = checkEgressPolicy({ allowOut: ['198.51.100.10/32', 'example.com', '*.example.org'], denyOut: ['0.0.0.0/0'] });

  it('allows a name that matches an allowOut domain, at any non-floor address', () => {
    expect(decideEgress(policy, floor, at('198.51.100.20'), 'example.com')).toBe('allow-domain');
    expect(decideEgress(policy, floor, at('198.51.100.20'), 'api.example.org')).toBe('allow-domain');
    expect(decideEgress(policy, floor, at('198.51.100.20'), 'example.org')).toBe('refuse-denied');
    expect(decideEgress(policy, floor, at('198.51.100.20'), 'other.com')).toBe('refuse-denied');
    expect(decideEgress(policy, floor, at('198.51.100.20'), undefined)).toBe('refuse-denied');
  });

  it('never opens the floor, whatever the name', () => {
    expect(decideEgress(policy, floor, at('169.254.169.254', 80), 'example.com')).toBe('refuse-floor');
    expect(decideEgress(policy, floor, at('192.0.2.1'), 'example.com')).toBe('refuse-floor');
    expect(decideEgress(policy, floor, at('10.200.0.3'), 'example.com')).toBe('refuse-floor');
    expect(decideEgress(policy, floor, at('10.213.77.1'), 'example.com')).toBe('allow-domain');
  });

  it('applies the address rules otherwise: allowOut CIDRs, then denyOut, else allowed', () => {
    expect(decideEgress(policy, floor, at('198.51.100.10'), 'other.com')).toBe('allow-address');
    const denySome = checkEgressPolicy({ allowOut: ['example.com'], denyOut: ['198.51.100.0/25'] });
    expect(decideEgress(denySome, floor, at('198.51.100.200'), 'other.com')).toBe('allow-default');
    expect(decideEgress(denySome, floor, at('198.51.100.20'), 'other.com')).toBe('refuse-denied');
  });

  it('needs the name only when the address alone would be refused', () => {
    expect(needsName(policy, at('198.51.100.20'))).toBe(true);
    expect(needsName(policy, at('198.51.100.10'))).toBe(false);
    expect(needsName(checkEgressPolicy({ allowOut: ['example.com'] }), at('198.51.100.20'))).toBe(false);
  });
});
