import 'reflect-metadata';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { Module, type INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { runHostCommand } from '../../src/host-command/host-command';
import {
  GATEWAY_IP,
  GUEST_IP,
  GUEST_MAC,
  EgressProxyNotConfiguredError,
  InvalidEgressPolicyError,
  NetworkConfigError,
  NetworkModule,
  NetworkSlotPool,
  SlotNotLeasedError,
  SlotsExhaustedError,
  TAP_MAC,
  TAP_NAME,
  type NetworkOptions,
  type NetworkSlot,
} from '../../src/network';
import {
  addRoutedAddresses,
  attachFakeGuest,
  createOutsideNetns,
  deleteLinkIfPresent,
  deleteNetnsIfPresent,
  ip,
  NetnsEchoServer,
  probeFromHost,
  probeFromNetns,
} from './netns-fixtures';

jest.setTimeout(60_000);

// Names and addresses private to this test file, so it never touches a running agent's slots.
const PREFIX = 'ktnet';
const SLOT_CIDR = '10.201.0.0/24';
const OUTSIDE_NETNS = 'ktnet-outside';
const OUTSIDE_HOST_IF = 'ktnet-out';
/** Host end of the transit link to the "outside" namespace (a host network: in the platform floor). */
const OUTSIDE_HOST_IP = '198.51.100.1';
const OUTSIDE_TRANSIT_PEER = '198.51.100.2';
/** "Internet" addresses behind the transit link, outside every host network. */
const OUTSIDE_ROUTE = '198.51.100.64/26';
const OUTSIDE_PEER_IP = '198.51.100.66';
/** A second "internet" address, to tell allowed destinations from denied ones. */
const OUTSIDE_OTHER_IP = '198.51.100.67';
const GUEST_NETNS = (n: number) => `ktnet-guest-${n}`;
const MAX_GUEST_NETNS = 16;
/** What an explicit `reject with icmpx admin-prohibited` looks like to a TCP client (a timeout would not prove it). */
const REJECTED = { ok: false, code: 'EHOSTUNREACH' };

async function startPool(options: Partial<NetworkOptions>): Promise<{ app: INestApplicationContext; pool: NetworkSlotPool }> {
  @Module({ imports: [NetworkModule.register({ namePrefix: PREFIX, slotCidr: SLOT_CIDR, ...options })] })
  class TestAppModule {}
  const app = await NestFactory.createApplicationContext(TestAppModule, { logger: false, abortOnError: false });
  return { app, pool: app.get(NetworkSlotPool) };
}

async function listNetns(): Promise<string[]> {
  const { stdout } = await ip('-j', 'netns', 'list');
  return (JSON.parse(stdout || '[]') as { name: string }[]).map((n) => n.name);
}

async function listLinks(): Promise<string[]> {
  const { stdout } = await ip('-j', 'link', 'show');
  return (JSON.parse(stdout || '[]') as { ifname: string }[]).map((l) => l.ifname);
}

async function slotTableRules(slot: NetworkSlot): Promise<string> {
  const { stdout } = await runHostCommand('ip', ['netns', 'exec', slot.netnsName, 'nft', '-s', 'list', 'table', 'inet', 'kiln']);
  return stdout;
}

async function tapDetails(slot: NetworkSlot) {
  const { stdout } = await ip('-n', slot.netnsName, '-d', '-j', 'addr', 'show', 'dev', TAP_NAME);
  const [link] = JSON.parse(stdout) as {
    address: string;
    linkinfo?: { info_kind: string; info_data?: { type: string } };
    addr_info: { family: string; local: string; prefixlen: number }[];
  }[];
  return {
    kind: `${link.linkinfo?.info_kind}/${link.linkinfo?.info_data?.type}`,
    mac: link.address,
    ipv4: link.addr_info.filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`),
  };
}

async function tapNeighbours(slot: NetworkSlot): Promise<string[]> {
  const { stdout } = await ip('-n', slot.netnsName, '-j', 'neigh', 'show', 'dev', TAP_NAME);
  return (JSON.parse(stdout || '[]') as { dst: string; lladdr?: string; state?: string[] }[]).map(
    (n) => `${n.dst} ${n.lladdr} ${(n.state ?? []).join(',')}`,
  );
}

/** Tracked flows in a slot namespace, or in the root namespace from/to one address (needs the conntrack tool). */
async function conntrackEntries(netns: string | null, address?: string): Promise<number> {
  const list = (args: string[]) =>
    runHostCommand(netns ? 'ip' : 'conntrack', netns ? ['netns', 'exec', netns, 'conntrack', '-L', ...args] : ['-L', ...args]);
  const outputs = address ? [await list(['-s', address]), await list(['-d', address])] : [await list([])];
  return outputs.reduce((n, { stdout }) => n + stdout.split('\n').filter((l) => l.trim()).length, 0);
}

async function linkFlags(slot: NetworkSlot): Promise<string[]> {
  const { stdout } = await ip('-n', slot.netnsName, '-j', 'link', 'show', 'dev', TAP_NAME);
  return (JSON.parse(stdout) as { flags: string[] }[])[0].flags;
}

async function waitFor(condition: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function removeTestNamespaces(): Promise<void> {
  for (let n = 0; n < MAX_GUEST_NETNS; n++) await deleteNetnsIfPresent(GUEST_NETNS(n));
  await deleteLinkIfPresent(OUTSIDE_HOST_IF);
  await deleteNetnsIfPresent(OUTSIDE_NETNS);
}

describe('NetworkSlotPool on real network namespaces', () => {
  let originalIpForward: string;
  let app: INestApplicationContext | undefined;
  let pool: NetworkSlotPool;
  const servers: NetnsEchoServer[] = [];
  let hostService: Server | undefined;
  let guestCounter = 0;

  const nextGuestNetns = () => GUEST_NETNS(guestCounter++);
  const startEcho = async (netns: string, host: string, port: number) => {
    const server = await NetnsEchoServer.start(netns, host, port);
    servers.push(server);
    return server;
  };

  beforeAll(async () => {
    originalIpForward = await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8');
    // Leftovers of an earlier run that was killed before its cleanup.
    await removeTestNamespaces();
    const leftover = await startPool({ prefill: 0 });
    await leftover.pool.destroyAll();
    await leftover.app.close();

    await createOutsideNetns(OUTSIDE_NETNS, OUTSIDE_HOST_IF, OUTSIDE_HOST_IP, OUTSIDE_TRANSIT_PEER);
    await addRoutedAddresses(OUTSIDE_NETNS, OUTSIDE_TRANSIT_PEER, OUTSIDE_ROUTE, [OUTSIDE_PEER_IP, OUTSIDE_OTHER_IP]);
    ({ app, pool } = await startPool({ maxSlots: 6, prefill: 2, maxIdle: 4 }));
    await pool.init([]);
    await pool.whenFilled();
  });

  afterAll(async () => {
    await Promise.allSettled(servers.map((s) => s.stop()));
    await new Promise<void>((resolve) => (hostService ? hostService.close(() => resolve()) : resolve()));
    try {
      if (app) {
        await app.get(NetworkSlotPool).destroyAll();
        await app.close();
      }
    } finally {
      await removeTestNamespaces();
      // Put forwarding back as found, unless another slot pool (a running agent, a parallel test) now relies on it.
      const otherPools = (await listNetns()).some((n) => /-slot-\d+$/.test(n));
      if (!otherPools) await writeFile('/proc/sys/net/ipv4/ip_forward', originalIpForward);
    }
  });

  it('hands out prefilled slots with the fixed guest addressing and distinct host addresses', async () => {
    expect(pool.stats()).toMatchObject({ free: 2, leased: 0 });
    const a = await pool.acquire();
    const b = await pool.acquire();
    try {
      expect(a.hostAddress).not.toEqual(b.hostAddress);
      for (const slot of [a, b]) {
        expect(slot).toMatchObject({ guestIp: GUEST_IP, guestMac: GUEST_MAC, gatewayIp: GATEWAY_IP, tapName: TAP_NAME });
        expect(slot.netnsName).toBe(`${PREFIX}-slot-${slot.index}`);
        expect(slot.netnsPath).toBe(`/run/netns/${slot.netnsName}`);
        expect(await listNetns()).toContain(slot.netnsName);
        expect(await listLinks()).toContain(slot.hostVeth);
        expect(await tapDetails(slot)).toEqual({ kind: 'tun/tap', mac: TAP_MAC, ipv4: [`${GATEWAY_IP}/30`] });
        expect(await tapNeighbours(slot)).toEqual([`${GUEST_IP} ${GUEST_MAC} PERMANENT`]);
      }
    } finally {
      await pool.release(a);
      await pool.release(b);
    }
  });

  it('reaches a server in the guest at hostAddress on any port, with replies routed back through the slot', async () => {
    const slot = await pool.acquire();
    try {
      const guest = nextGuestNetns();
      await attachFakeGuest(slot, guest);
      await startEcho(guest, GUEST_IP, 8080);
      await startEcho(guest, GUEST_IP, 49983);
      // The guest sees its gateway as the peer: the slot SNATs inbound traffic so replies never need a guest route.
      expect(await probeFromHost(slot.hostAddress, 8080)).toEqual({ ok: true, seenFrom: GATEWAY_IP });
      expect(await probeFromHost(slot.hostAddress, 49983)).toEqual({ ok: true, seenFrom: GATEWAY_IP });
    } finally {
      await pool.release(slot);
    }
  });

  it('lets the guest out through NAT on the host, but not into other slots or the host itself', async () => {
    const a = await pool.acquire();
    const b = await pool.acquire();
    try {
      const guestA = nextGuestNetns();
      const guestB = nextGuestNetns();
      await attachFakeGuest(a, guestA);
      await attachFakeGuest(b, guestB);
      await startEcho(OUTSIDE_NETNS, OUTSIDE_PEER_IP, 8081);
      await startEcho(guestB, GUEST_IP, 8082);
      hostService = createServer((s) => s.end(JSON.stringify({ seenFrom: s.remoteAddress })));
      await new Promise<void>((resolve) => hostService!.listen(8083, '0.0.0.0', resolve));

      // A slot is leased closed: nothing leaves it until its sandbox's policy is applied (here: none, all open).
      expect(await probeFromNetns(guestA, OUTSIDE_PEER_IP, 8081)).toEqual(REJECTED);
      await pool.setEgressPolicy(a, {});
      await pool.setEgressPolicy(b, {});
      // Egress: the outside world sees the host's address on its link, not the slot's.
      expect(await probeFromNetns(guestA, OUTSIDE_PEER_IP, 8081)).toEqual({ ok: true, seenFrom: OUTSIDE_HOST_IP });

      // Slot B's guest serves the host fine, but slot A's guest may not connect to it.
      expect(await probeFromHost(b.hostAddress, 8082)).toMatchObject({ ok: true });
      expect(await probeFromNetns(guestA, b.hostAddress, 8082)).toEqual(REJECTED);

      // A host service on all interfaces answers locally but not to the guest, on any host address.
      expect(await probeFromHost('127.0.0.1', 8083)).toMatchObject({ ok: true });
      const hostSideOfA = (await ip('-j', '-4', 'addr', 'show', 'dev', a.hostVeth)).stdout;
      const hostSideIp = (JSON.parse(hostSideOfA) as { addr_info: { local: string }[] }[])[0].addr_info[0].local;
      expect(await probeFromNetns(guestA, hostSideIp, 8083)).toEqual(REJECTED);
      expect(await probeFromNetns(guestA, OUTSIDE_HOST_IP, 8083)).toEqual(REJECTED);
      // Nor can it reach the slot namespace itself (its own hostAddress) or the gateway.
      expect(await probeFromNetns(guestA, a.hostAddress, 8083)).toEqual(REJECTED);
      expect(await probeFromNetns(guestA, GATEWAY_IP, 8083)).toEqual(REJECTED);

      // Defence in depth: with slot A's own egress filter opened up, the host's table still isolates it.
      await runHostCommand('ip', ['netns', 'exec', a.netnsName, 'nft', '-f', '-'], {
        input: 'flush chain inet kiln egress\nadd rule inet kiln egress accept\n',
      });
      expect(await probeFromNetns(guestA, b.hostAddress, 8082)).toEqual(REJECTED);
      expect(await probeFromNetns(guestA, hostSideIp, 8083)).toEqual(REJECTED);
      expect(await probeFromNetns(guestA, OUTSIDE_PEER_IP, 8081)).toMatchObject({ ok: true });
    } finally {
      await pool.release(a);
      await pool.release(b);
    }
  });

  it('returns a released slot clean: fresh tap, pristine rules, neighbours and conntrack, reachable again', async () => {
    const held = new Set<NetworkSlot>();
    const take = async () => {
      const slot = await pool.acquire();
      held.add(slot);
      return slot;
    };
    const giveBack = async (slot: NetworkSlot) => {
      held.delete(slot);
      await pool.release(slot);
    };
    try {
      const pristine = await take();
      const pristineRules = await slotTableRules(pristine);
      const slot = await take();
      const guest = nextGuestNetns();
      await attachFakeGuest(slot, guest);
      // What a sandbox's life may leave behind: a per-sandbox egress rule, a learned neighbour...
      await runHostCommand('ip', ['netns', 'exec', slot.netnsName, 'nft', 'insert', 'rule', 'inet', 'kiln', 'egress', 'tcp', 'dport', '8099', 'drop']);
      await pool.setEgressPolicy(slot, { denyOut: ['203.0.113.0/24'], allowOut: ['203.0.113.7/32'] });
      await ip('-n', slot.netnsName, 'neigh', 'replace', '169.254.0.23', 'lladdr', '02:00:00:00:00:99', 'dev', TAP_NAME);
      expect(await slotTableRules(slot)).not.toEqual(pristineRules);
      // ...and tracked connections, both into the guest and out of it.
      await startEcho(guest, GUEST_IP, 8086);
      expect(await probeFromHost(slot.hostAddress, 8086)).toMatchObject({ ok: true });
      expect(await probeFromNetns(guest, OUTSIDE_PEER_IP, 8081)).toMatchObject({ ok: true });
      expect(await conntrackEntries(slot.netnsName)).toBeGreaterThan(0);
      expect(await conntrackEntries(null, slot.hostAddress)).toBeGreaterThan(0);
      await giveBack(slot);

      const again = await take();
      expect(again.index).toBe(slot.index);
      expect(await tapDetails(again)).toEqual({ kind: 'tun/tap', mac: TAP_MAC, ipv4: [`${GATEWAY_IP}/30`] });
      expect(await tapNeighbours(again)).toEqual([`${GUEST_IP} ${GUEST_MAC} PERMANENT`]);
      expect(await conntrackEntries(again.netnsName)).toBe(0);
      expect(await conntrackEntries(null, again.hostAddress)).toBe(0);
      expect((await slotTableRules(again)).replaceAll(again.hostAddress, 'HOST')).toEqual(
        pristineRules.replaceAll(pristine.hostAddress, 'HOST'),
      );
      const nextGuest = nextGuestNetns();
      await attachFakeGuest(again, nextGuest);
      await startEcho(nextGuest, GUEST_IP, 8084);
      expect(await probeFromHost(again.hostAddress, 8084)).toEqual({ ok: true, seenFrom: GATEWAY_IP });
      // Back to closed, as made: the previous sandbox's openings are gone until the next one's policy is applied.
      expect(await probeFromNetns(nextGuest, OUTSIDE_PEER_IP, 8081)).toEqual(REJECTED);
      await pool.setEgressPolicy(again, {});
      expect(await probeFromNetns(nextGuest, OUTSIDE_PEER_IP, 8081)).toMatchObject({ ok: true });
    } finally {
      for (const slot of held) await pool.release(slot);
    }
  });

  it('applies per-sandbox egress policy: deny all, allow some, never past platform isolation', async () => {
    const a = await pool.acquire();
    const b = await pool.acquire();
    try {
      const guestA = nextGuestNetns();
      const guestB = nextGuestNetns();
      await attachFakeGuest(a, guestA);
      await attachFakeGuest(b, guestB);
      await startEcho(guestA, GUEST_IP, 8087);
      await startEcho(guestB, GUEST_IP, 8087);
      await startEcho(OUTSIDE_NETNS, OUTSIDE_PEER_IP, 8088);
      await startEcho(OUTSIDE_NETNS, OUTSIDE_OTHER_IP, 8088);
      await pool.setEgressPolicy(a, {});
      await pool.setEgressPolicy(b, {});
      expect(await probeFromNetns(guestA, OUTSIDE_OTHER_IP, 8088)).toMatchObject({ ok: true });

      // allow_internet_access: false
      await pool.setEgressPolicy(a, { denyOut: ['0.0.0.0/0'] });
      expect(await probeFromNetns(guestA, OUTSIDE_PEER_IP, 8088)).toEqual(REJECTED);
      expect(await probeFromNetns(guestA, OUTSIDE_OTHER_IP, 8088)).toEqual(REJECTED);
      // Inbound traffic from the host and other slots' egress are not affected.
      expect(await probeFromHost(a.hostAddress, 8087)).toEqual({ ok: true, seenFrom: GATEWAY_IP });
      expect(await probeFromNetns(guestB, OUTSIDE_PEER_IP, 8088)).toMatchObject({ ok: true });

      // An allowlist: allowed entries beat the deny-all, but cannot open other slots or link-local space.
      await pool.setEgressPolicy(a, {
        denyOut: ['0.0.0.0/0'],
        allowOut: [`${OUTSIDE_PEER_IP}/32`, `${b.hostAddress}/32`, '169.254.0.0/16', '10.0.0.0/8'],
      });
      expect(await probeFromNetns(guestA, OUTSIDE_PEER_IP, 8088)).toMatchObject({ ok: true });
      expect(await probeFromNetns(guestA, OUTSIDE_OTHER_IP, 8088)).toEqual(REJECTED);
      expect(await probeFromNetns(guestA, b.hostAddress, 8087)).toEqual(REJECTED);

      // A deny list, then an empty policy opening everything again.
      await pool.setEgressPolicy(a, { denyOut: [`${OUTSIDE_OTHER_IP}/32`, '198.51.100.200/30'] });
      expect(await probeFromNetns(guestA, OUTSIDE_PEER_IP, 8088)).toMatchObject({ ok: true });
      expect(await probeFromNetns(guestA, OUTSIDE_OTHER_IP, 8088)).toEqual(REJECTED);
      await pool.setEgressPolicy(a, {});
      expect(await probeFromNetns(guestA, OUTSIDE_OTHER_IP, 8088)).toMatchObject({ ok: true });

      // This pool has no egress proxy: domain rules cannot be enforced, so they are refused.
      await expect(pool.setEgressPolicy(a, { allowOut: ['*.github.com'] })).rejects.toBeInstanceOf(EgressProxyNotConfiguredError);
      // The control plane normalises; the host only checks (a host-bits-set or bare address is not normal form).
      for (const bad of ['not an ip', '1.2.3.4/33', '300.1.1.1', '::1', '', '198.51.100.201/30', '198.51.100.3']) {
        await expect(pool.setEgressPolicy(a, { denyOut: [bad] })).rejects.toBeInstanceOf(InvalidEgressPolicyError);
      }
      await expect(pool.setEgressPolicy({ index: 9999 }, {})).rejects.toBeInstanceOf(SlotNotLeasedError);
      // A rejected policy changed nothing.
      expect(await probeFromNetns(guestA, OUTSIDE_OTHER_IP, 8088)).toMatchObject({ ok: true });
    } finally {
      await pool.release(a);
      await pool.release(b);
    }
  });

  it('lets a real QEMU attach to the slot tap (paused, no guest kernel needed) and reclaims it afterwards', async () => {
    const slot = await pool.acquire();
    let qemu: ChildProcess | undefined;
    try {
      qemu = spawn(
        'ip',
        ['netns', 'exec', slot.netnsName, 'qemu-system-x86_64', '-M', 'microvm', '-nodefaults', '-no-user-config',
          '-display', 'none', '-S', '-netdev', `tap,id=n0,ifname=${slot.tapName},script=no,downscript=no`,
          '-device', `virtio-net-device,netdev=n0,mac=${slot.guestMac}`],
        { stdio: 'ignore' },
      );
      const exited = new Promise((resolve) => qemu!.once('exit', resolve));
      // The tap only has carrier while a VMM holds it open.
      await waitFor(async () => (await linkFlags(slot)).includes('LOWER_UP'), 10_000);
      qemu.kill('SIGTERM');
      await exited;
      await waitFor(async () => (await linkFlags(slot)).includes('NO-CARRIER'), 5_000);
    } finally {
      if (qemu && qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL');
      await pool.release(slot);
    }
    expect(await tapDetails(slot)).toEqual({ kind: 'tun/tap', mac: TAP_MAC, ipv4: [`${GATEWAY_IP}/30`] });
  });

  it('hands out distinct slots to concurrent acquires, throws SlotsExhaustedError at maxSlots and typed errors for bad releases', async () => {
    const held: NetworkSlot[] = [];
    try {
      // Seven at once against six slots, racing the background refill: six distinct slots and one typed refusal.
      const results = await Promise.allSettled(Array.from({ length: 7 }, () => pool.acquire()));
      for (const r of results) if (r.status === 'fulfilled') held.push(r.value);
      expect(new Set(held.map((s) => s.index)).size).toBe(6);
      const refusals = results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason);
      expect(refusals).toHaveLength(1);
      expect(refusals[0]).toBeInstanceOf(SlotsExhaustedError);
      await expect(pool.acquire()).rejects.toBeInstanceOf(SlotsExhaustedError);
    } finally {
      for (const slot of held) await pool.release(slot);
    }
    await expect(pool.release(held[0])).rejects.toBeInstanceOf(SlotNotLeasedError);
    await expect(pool.release({ index: 9999 })).rejects.toBeInstanceOf(SlotNotLeasedError);
  });

  it('on restart adopts slots of live sandboxes untouched and removes the rest', async () => {
    const kept = await pool.acquire();
    const dropped = await pool.acquire();
    const guest = nextGuestNetns();
    await attachFakeGuest(kept, guest);
    await startEcho(guest, GUEST_IP, 8085);

    // A new agent process: the old pool object is simply abandoned, as after a crash.
    await app!.close();
    // Debris of a crash mid-build: a namespace that never got its veth (claimed by a sandbox record, even), and a
    // host veth whose namespace is gone.
    await ip('netns', 'add', `${PREFIX}-slot-40`);
    await ip('link', 'add', `${PREFIX}-v41`, 'type', 'veth', 'peer', 'name', `${PREFIX}-p41`);
    ({ app, pool } = await startPool({ maxSlots: 6, prefill: 1, maxIdle: 4 }));
    const report = await pool.init([kept.index, 40, 5000]);
    expect(report).toMatchObject({ adopted: [kept.index] });
    expect(report.lost.map((l) => l.index)).toEqual([40, 5000]);
    expect(report.destroyed).toEqual(expect.arrayContaining([dropped.index, 40, 41]));
    expect(await listNetns()).not.toContain(dropped.netnsName);
    expect(await listNetns()).not.toContain(`${PREFIX}-slot-40`);
    expect(await listLinks()).not.toEqual(expect.arrayContaining([`${PREFIX}-v41`]));
    expect(await listLinks()).not.toContain(`${PREFIX}-p41`);

    // The adopted slot still carries the running guest's traffic, and is never handed out again while leased.
    expect(await probeFromHost(kept.hostAddress, 8085)).toEqual({ ok: true, seenFrom: GATEWAY_IP });
    expect(pool.leasedSlot(kept.index)).toEqual(kept);
    await pool.whenFilled();
    const fresh = await pool.acquire();
    expect(fresh.index).not.toBe(kept.index);
    await pool.release(fresh);
    await pool.release(kept);
  });

  it('refuses a slot block that overlaps addresses already on the host', async () => {
    const clash = await startPool({ namePrefix: 'ktclash', slotCidr: '198.51.100.0/25' });
    try {
      await expect(clash.pool.init([])).rejects.toBeInstanceOf(NetworkConfigError);
      await expect(clash.pool.acquire()).rejects.toThrow(/not ready/);
    } finally {
      await clash.app.close();
    }
  });

  it('rejects unusable options when the module starts', async () => {
    await expect(startPool({ namePrefix: 'much-too-long-prefix' })).rejects.toBeInstanceOf(NetworkConfigError);
    await expect(startPool({ slotCidr: '10.201.0.1/24' })).rejects.toBeInstanceOf(NetworkConfigError);
    await expect(startPool({ maxSlots: 1000 })).rejects.toBeInstanceOf(NetworkConfigError);
  });

  it('destroyAll removes every namespace, veth, tap and rule table it made', async () => {
    const slot = await pool.acquire();
    await pool.destroyAll();
    const netns = await listNetns();
    expect(netns.filter((n) => n.startsWith(`${PREFIX}-slot-`))).toEqual([]);
    expect((await listLinks()).filter((l) => l.startsWith(`${PREFIX}-v`))).toEqual([]);
    // The whole ruleset, iptables-nft's tables included, no longer mentions the pool's table or interfaces.
    const { stdout: ruleset } = await runHostCommand('nft', ['list', 'ruleset']);
    expect(ruleset).not.toContain(PREFIX);
    expect((await runHostCommand('iptables-save', [])).stdout).not.toContain(PREFIX);
    // Taps lived only inside the slot namespaces; with those gone, none is left anywhere.
    expect(netns).not.toContain(slot.netnsName);
    await expect(pool.acquire()).rejects.toThrow(/not ready/);
  });
});
