import { NetworkConfigError } from './network.errors';
import { resolveNetworkOptions } from './network.options';
import { cidrsOverlap, formatIpv4, parseIpv4, parseSlotPool, slotAddresses } from './slot-addressing';

describe('slot addressing', () => {
  it('gives each index its own /31: even address on the host veth, odd one as the hostAddress', () => {
    const pool = parseSlotPool('10.200.0.0/16');
    expect(pool.capacity).toBe(32768);
    expect(slotAddresses(pool, 0)).toEqual({ hostSideIp: '10.200.0.0', hostAddress: '10.200.0.1' });
    expect(slotAddresses(pool, 127)).toEqual({ hostSideIp: '10.200.0.254', hostAddress: '10.200.0.255' });
    expect(slotAddresses(pool, 128)).toEqual({ hostSideIp: '10.200.1.0', hostAddress: '10.200.1.1' });
    expect(slotAddresses(pool, 32767)).toEqual({ hostSideIp: '10.200.255.254', hostAddress: '10.200.255.255' });
  });

  it('refuses indexes outside the block', () => {
    const pool = parseSlotPool('10.201.0.0/24');
    for (const bad of [-1, 128, 1.5, Number.NaN]) expect(() => slotAddresses(pool, bad)).toThrow(NetworkConfigError);
  });

  it('parses only well-formed IPv4 and CIDRs', () => {
    expect(formatIpv4(parseIpv4('255.0.10.1'))).toBe('255.0.10.1');
    for (const bad of ['10.0.0', '10.0.0.256', '01.2.3.4', '1.2.3.4.5', 'a.b.c.d', '']) {
      expect(() => parseIpv4(bad)).toThrow(NetworkConfigError);
    }
    for (const bad of ['10.200.0.0', '10.200.0.1/16', '10.0.0.0/7', '10.0.0.0/31', '10.200.0.0/x']) {
      expect(() => parseSlotPool(bad)).toThrow(NetworkConfigError);
    }
  });

  it('detects overlapping blocks in either direction', () => {
    const pool = parseSlotPool('10.200.0.0/16');
    const net = (cidr: string) => ({ network: parseIpv4(cidr.split('/')[0]), prefixLength: Number(cidr.split('/')[1]) });
    expect(cidrsOverlap(pool, net('10.0.0.0/8'))).toBe(true);
    expect(cidrsOverlap(pool, net('10.200.5.7/32'))).toBe(true);
    expect(cidrsOverlap(pool, net('10.201.0.0/16'))).toBe(false);
    expect(cidrsOverlap(pool, net('192.0.2.0/24'))).toBe(false);
  });
});

describe('network options', () => {
  it('fills defaults and shrinks the default slot cap to a small block', () => {
    expect(resolveNetworkOptions()).toMatchObject({ namePrefix: 'kiln', slotCidr: '10.200.0.0/16', maxSlots: 1024 });
    expect(resolveNetworkOptions({ slotCidr: '10.201.0.0/28' }).maxSlots).toBe(8);
    expect(resolveNetworkOptions({ prefill: undefined }).prefill).toBe(4);
  });

  it('rejects values that would break names or the pool', () => {
    expect(() => resolveNetworkOptions({ namePrefix: 'Kiln' })).toThrow(NetworkConfigError);
    expect(() => resolveNetworkOptions({ namePrefix: 'toolongname' })).toThrow(NetworkConfigError);
    expect(() => resolveNetworkOptions({ slotCidr: '10.201.0.0/28', maxSlots: 9 })).toThrow(NetworkConfigError);
    expect(() => resolveNetworkOptions({ maxSlots: 2, prefill: 3 })).toThrow(NetworkConfigError);
    expect(() => resolveNetworkOptions({ maxSlots: 0 })).toThrow(NetworkConfigError);
    expect(() => resolveNetworkOptions({ prefill: -1 })).toThrow(NetworkConfigError);
  });
});
