import { NetworkConfigError } from './network.errors';
import { parseIpv4Block, PlatformFloor, subnetOf } from './platform-floor';

describe('PlatformFloor', () => {
  const floor = new PlatformFloor({ slotPool: '10.200.0.0/16', hostNetworks: ['192.0.2.0/24'], openRanges: ['10.213.77.0/24', '192.0.2.128/25'] });

  it('blocks private, special, host and slot ranges and lets public addresses through', () => {
    for (const blocked of ['10.1.2.3', '172.16.0.1', '172.31.255.255', '192.168.1.1', '100.64.0.1', '127.0.0.1', '169.254.169.254',
      '0.1.2.3', '224.0.0.251', '240.0.0.1', '255.255.255.255', '192.0.2.7', '10.200.0.3', 'not-an-ip', '::1']) {
      expect([blocked, floor.blocks(blocked)]).toEqual([blocked, true]);
    }
    for (const open of ['198.51.100.7', '8.8.8.8', '172.32.0.1', '100.128.0.1', '11.0.0.1']) {
      expect([open, floor.blocks(open)]).toEqual([open, false]);
    }
  });

  it('opens operator ranges, but never the slot pool', () => {
    expect(floor.blocks('10.213.77.1')).toBe(false);
    expect(floor.blocks('10.213.78.1')).toBe(true);
    expect(floor.blocks('192.0.2.200')).toBe(false);
    const openPool = new PlatformFloor({ slotPool: '10.200.0.0/16', hostNetworks: [], openRanges: ['10.0.0.0/8'] });
    expect(openPool.blocks('10.1.0.1')).toBe(false);
    expect(openPool.blocks('10.200.0.1')).toBe(true);
  });

  it('parses blocks strictly and derives interface subnets', () => {
    expect(parseIpv4Block('198.51.100.7')).toMatchObject({ cidr: '198.51.100.7/32', prefixLength: 32 });
    expect(() => parseIpv4Block('198.51.100.7/24')).toThrow(NetworkConfigError);
    expect(() => parseIpv4Block('300.0.0.0/8')).toThrow(NetworkConfigError);
    expect(() => parseIpv4Block('10.0.0.0/33')).toThrow(NetworkConfigError);
    expect(subnetOf('192.0.2.77', 24)).toBe('192.0.2.0/24');
    expect(subnetOf('10.212.0.1', 31)).toBe('10.212.0.0/31');
  });
});
