import { checkEgressPolicy } from './egress-policy';
import { PlatformFloor } from './platform-floor';
import { parseSlotPool, slotAddresses } from './slot-addressing';
import { egressPolicyRuleset, hostRuleset, proxiedSlotRuleset, slotRuleset } from './slot-rules';

const pool = parseSlotPool('10.200.0.0/24');
const floor = new PlatformFloor({ slotPool: pool.cidr, hostNetworks: ['192.0.2.0/24'], openRanges: ['10.213.77.0/24'] });

/** The rules of one chain, in order, without counters. */
function chain(ruleset: string, name: string): string[] {
  const start = ruleset.indexOf(`chain ${name} {`);
  const body = ruleset.slice(start, ruleset.indexOf('\n  }', start)).split('\n').slice(1);
  return body.map((l) => l.trim()).filter((l) => l && !l.startsWith('type '));
}

describe('slot rules', () => {
  const rules = slotRuleset(slotAddresses(pool, 3), pool, { floor, dnsResolvers: ['8.8.8.8', '1.1.1.1'] });

  it('checks other slots, DNS and the platform floor before any per-sandbox rule', () => {
    expect(chain(rules, 'egress')).toEqual([
      'ip daddr 10.200.0.0/24 counter reject with icmpx type admin-prohibited',
      'ip daddr @dns_resolvers meta l4proto { tcp, udp } th dport 53 accept',
      'meta l4proto { tcp, udp } th dport 53 counter reject with icmpx type admin-prohibited',
      'ip daddr @platform_floor ip daddr != @floor_open counter reject with icmpx type admin-prohibited',
      'jump web_via_proxy',
      'ip daddr @allow_out accept',
      'ip daddr @deny_out counter reject with icmpx type admin-prohibited',
      'accept',
    ]);
    expect(rules).toContain('set dns_resolvers {\n    type ipv4_addr; flags interval; auto-merge; elements = { 8.8.8.8, 1.1.1.1 };');
    expect(rules).toMatch(/set platform_floor \{[^}]*elements = \{ 0\.0\.0\.0\/8, 10\.0\.0\.0\/8, 100\.64\.0\.0\/10, 127\.0\.0\.0\/8, 169\.254\.0\.0\/16, 172\.16\.0\.0\/12, 192\.168\.0\.0\/16, 224\.0\.0\.0\/4, 240\.0\.0\.0\/4, 192\.0\.2\.0\/24 \}/);
    expect(rules).toContain('set floor_open {\n    type ipv4_addr; flags interval; auto-merge; elements = { 10.213.77.0/24 };');
    // No policy: empty sets, no web steering.
    expect(rules).toContain('set allow_out {\n    type ipv4_addr; flags interval; auto-merge;\n  }');
    expect(chain(rules, 'web_via_proxy')).toEqual([]);
  });

  it('renders a policy into the sets, and web traffic to the proxy only with domain rules', () => {
    const addressesOnly = egressPolicyRuleset(checkEgressPolicy({ allowOut: ['198.51.100.7/32'], denyOut: ['0.0.0.0/0'] }));
    expect(addressesOnly).toBe(
      'flush set inet kiln allow_out\nadd element inet kiln allow_out { 198.51.100.7/32 }\n' +
        'flush set inet kiln deny_out\nadd element inet kiln deny_out { 0.0.0.0/0 }\n' +
        'flush chain inet kiln web_via_proxy\n',
    );
    const withDomains = egressPolicyRuleset(checkEgressPolicy({ allowOut: ['example.com'], denyOut: ['0.0.0.0/0'] }));
    expect(withDomains).toContain('flush set inet kiln allow_out\nflush set inet kiln deny_out\nadd element inet kiln deny_out { 0.0.0.0/0 }\n');
    expect(withDomains).toContain('add rule inet kiln web_via_proxy tcp dport { 80, 443 } accept\n');
    // The adoption path renders table and policy as one transaction.
    const adopted = slotRuleset(slotAddresses(pool, 3), pool, { floor, dnsResolvers: [] }, checkEgressPolicy({ denyOut: ['0.0.0.0/0'] }));
    expect(adopted.endsWith('add element inet kiln deny_out { 0.0.0.0/0 }\nflush chain inet kiln web_via_proxy\n')).toBe(true);
  });
});

describe('host rules', () => {
  it('redirects proxied slots web traffic to the egress proxy and lets only that reach the host', () => {
    const rules = hostRuleset('kiln', pool, { egressProxyPort: 5008, proxiedSlotAddresses: ['10.200.0.7'] });
    expect(rules).toContain('set proxied_slots {\n    type ipv4_addr; elements = { 10.200.0.7 };\n  }');
    expect(chain(rules, 'prerouting')).toEqual(['iifname "kiln-v*" ip saddr @proxied_slots tcp dport { 80, 443 } counter redirect to :5008']);
    expect(chain(rules, 'input')).toEqual([
      'iifname "kiln-v*" ct state established,related accept',
      'iifname "kiln-v*" ip saddr @proxied_slots ct status dnat tcp dport 5008 ct original proto-dst { 80, 443 } accept',
      'iifname "kiln-v*" counter reject with icmpx type admin-prohibited',
    ]);
    expect(chain(rules, 'forward')).toEqual(
      expect.arrayContaining([
        'iifname "kiln-v*" ct status dnat counter drop',
        'iifname "kiln-v*" ip saddr @proxied_slots tcp dport { 80, 443 } counter reject with icmpx type admin-prohibited',
      ]),
    );
    expect(chain(rules, 'forward').at(-1)).toBe('iifname "kiln-v*" jump egress');
  });

  it('has no redirect without a proxy, and changes set membership idempotently', () => {
    const rules = hostRuleset('kiln', pool, { egressProxyPort: 0, proxiedSlotAddresses: [] });
    expect(chain(rules, 'prerouting')).toEqual([]);
    expect(rules).not.toContain('redirect');
    expect(rules).toContain('set proxied_slots {\n    type ipv4_addr;\n  }');
    expect(proxiedSlotRuleset('kiln', '10.200.0.7', true)).toBe('add element inet kiln proxied_slots { 10.200.0.7 }\n');
    expect(proxiedSlotRuleset('kiln', '10.200.0.7', false)).toBe(
      'add element inet kiln proxied_slots { 10.200.0.7 }\ndelete element inet kiln proxied_slots { 10.200.0.7 }\n',
    );
  });
});
