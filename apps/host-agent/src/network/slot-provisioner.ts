import { readdir, writeFile } from 'node:fs/promises';
import { Inject, Injectable, Logger } from '@nestjs/common';
import { hostToolAvailable, runHostCommand, type HostCommandOptions } from '../host-command/host-command';
import {
  GATEWAY_IP,
  GUEST_IP,
  GUEST_MAC,
  PREFIX,
  SLOT_NFT_TABLE,
  SLOT_UPLINK_NAME,
  TAP_MAC,
  TAP_NAME,
} from './network.constants';
import { NetworkConfigError, SlotPoolNotReadyError } from './network.errors';
import { NETWORK_OPTIONS, type ResolvedNetworkOptions } from './network.options';
import type { NetworkSlot } from './network-slot';
import { cidrsOverlap, parseIpv4, SLOT_LINK_PREFIX, slotAddresses } from './slot-addressing';
import type { AppliedEgressPolicy } from './egress-policy';
import { PlatformFloor, subnetOf } from './platform-floor';
import {
  egressPolicyRuleset,
  hostRuleset,
  proxiedSlotRuleset,
  removeHostRuleset,
  slotRuleset,
  type SlotEgressFloor,
} from './slot-rules';

export interface ExistingSlotObjects {
  /** Indexes with a `<prefix>-slot-<n>` namespace. */
  namespaces: Set<number>;
  /** Indexes with a `<prefix>-v<n>` interface in the root namespace. */
  hostVeths: Set<number>;
}

export interface SlotInspection {
  /** Empty when the slot has its namespace, veth pair, tap and rule table. */
  problems: string[];
}

interface IpLink {
  ifname: string;
  link_type?: string;
  address?: string;
  linkinfo?: { info_kind?: string; info_data?: { type?: string } };
}

interface IpAddrInfo {
  ifname: string;
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

interface IpRoute {
  dst: string;
  dev?: string;
}

const NETNS_DIR = '/run/netns';
const SYS_CLASS_NET = '/sys/class/net';

/**
 * Creates, resets, inspects and destroys the kernel objects behind a slot with iproute2 and nftables. Holds no
 * pool state; NetworkSlotPool decides which index gets what.
 */
@Injectable()
export class SlotProvisioner {
  private readonly logger = new Logger(SlotProvisioner.name);
  private conntrackAvailable: Promise<boolean> | undefined;
  /** Read once, by ensureHost at agent start: the host's networks are part of it. */
  private floor: PlatformFloor | undefined;

  constructor(@Inject(NETWORK_OPTIONS) private readonly options: ResolvedNetworkOptions) {}

  netnsName(index: number): string {
    return `${this.options.namePrefix}-slot-${index}`;
  }

  hostVethName(index: number): string {
    return `${this.options.namePrefix}-v${index}`;
  }

  describe(index: number): NetworkSlot {
    const netnsName = this.netnsName(index);
    return {
      index,
      netnsName,
      netnsPath: `${NETNS_DIR}/${netnsName}`,
      tapName: TAP_NAME,
      tapMac: TAP_MAC,
      hostVeth: this.hostVethName(index),
      hostAddress: slotAddresses(this.options.pool, index).hostAddress,
      guestIp: GUEST_IP,
      guestMac: GUEST_MAC,
      gatewayIp: GATEWAY_IP,
      prefixLength: PREFIX,
    };
  }

  /**
   * Refuses to run when the slot block is already in use on the host outside our own veths: DNAT to a slot would
   * otherwise shadow (or be shadowed by) a real network.
   */
  async assertPoolUnused(): Promise<void> {
    const pool = this.options.pool;
    const ours = new RegExp(`^${this.options.namePrefix}-v\\d+$`);
    const addrs = JSON.parse((await this.ip(['-j', '-4', 'addr', 'show'])).stdout || '[]') as IpAddrInfo[];
    for (const link of addrs) {
      if (ours.test(link.ifname)) continue;
      for (const a of link.addr_info ?? []) {
        if (a.family === 'inet' && cidrsOverlap(pool, { network: parseIpv4(a.local), prefixLength: a.prefixlen })) {
          throw new NetworkConfigError(`slot pool ${pool.cidr} overlaps ${a.local}/${a.prefixlen} on ${link.ifname}`);
        }
      }
    }
    const routes = JSON.parse((await this.ip(['-j', '-4', 'route', 'show'])).stdout || '[]') as IpRoute[];
    for (const route of routes) {
      if (route.dst === 'default' || (route.dev && ours.test(route.dev))) continue;
      const [net, len] = route.dst.split('/');
      const prefixLength = len === undefined ? 32 : Number(len);
      if (cidrsOverlap(pool, { network: parseIpv4(net), prefixLength })) {
        throw new NetworkConfigError(`slot pool ${pool.cidr} overlaps the host route ${route.dst} via ${route.dev ?? '?'}`);
      }
    }
  }

  /**
   * Host-wide setup shared by all slots; idempotent. Reads the host's own networks into the platform floor (once:
   * networks that appear later are not in it). `proxiedSlotAddresses` are the slots, adopted from a previous agent,
   * whose web traffic goes to the egress proxy: the re-created table holds them from its first moment.
   */
  async ensureHost(proxiedSlotAddresses: readonly string[] = []): Promise<void> {
    this.floor ??= new PlatformFloor({
      slotPool: this.options.pool.cidr,
      hostNetworks: await this.hostNetworks(),
      openRanges: this.options.openRanges,
    });
    if (this.options.enableHostForwarding) {
      await writeFile('/proc/sys/net/ipv4/ip_forward', '1\n');
    }
    await this.nft(
      null,
      hostRuleset(this.options.namePrefix, this.options.pool, {
        egressProxyPort: this.options.egressProxyPort,
        proxiedSlotAddresses,
      }),
    );
  }

  /** What no sandbox reaches; available once ensureHost ran. */
  platformFloor(): PlatformFloor {
    if (!this.floor) throw new SlotPoolNotReadyError('host not set up');
    return this.floor;
  }

  /** IPv4 subnets of the host's interfaces, but for this pool's own veths (the slot pool is in the floor anyway). */
  private async hostNetworks(): Promise<string[]> {
    const ours = new RegExp(`^${this.options.namePrefix}-v\\d+$`);
    const addrs = JSON.parse((await this.ip(['-j', '-4', 'addr', 'show'])).stdout || '[]') as IpAddrInfo[];
    const subnets = addrs
      .filter((link) => !ours.test(link.ifname))
      .flatMap((link) => (link.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => subnetOf(a.local, a.prefixlen)));
    return [...new Set(subnets)];
  }

  private egressFloor(): SlotEgressFloor {
    return { floor: this.platformFloor(), dnsResolvers: this.options.dnsResolvers };
  }

  async removeHost(): Promise<void> {
    await this.nft(null, removeHostRuleset(this.options.namePrefix));
  }

  /**
   * Reads the kernel's own lists rather than spawning `ip`: /run/netns holds one bind mount per named namespace and
   * /sys/class/net one entry per interface of the agent's (root) namespace.
   */
  async listExisting(): Promise<ExistingSlotObjects> {
    const netnsPattern = new RegExp(`^${this.options.namePrefix}-slot-(\\d+)$`);
    const vethPattern = new RegExp(`^${this.options.namePrefix}-v(\\d+)$`);
    const namespaces = new Set<number>();
    const hostVeths = new Set<number>();
    for (const name of await readdir(NETNS_DIR).catch(() => [] as string[])) {
      const m = netnsPattern.exec(name);
      if (m) namespaces.add(Number(m[1]));
    }
    for (const name of await readdir(SYS_CLASS_NET)) {
      const m = vethPattern.exec(name);
      if (m) hostVeths.add(Number(m[1]));
    }
    return { namespaces, hostVeths };
  }

  /** Builds a slot from nothing. On failure everything created so far is removed before the error propagates. */
  async create(index: number): Promise<NetworkSlot> {
    const slot = this.describe(index);
    const { hostSideIp, hostAddress } = slotAddresses(this.options.pool, index);
    try {
      await this.ipBatch(null, [
        `netns add ${slot.netnsName}`,
        `link add ${slot.hostVeth} type veth peer name ${SLOT_UPLINK_NAME} netns ${slot.netnsName}`,
        `addr add ${hostSideIp}/${SLOT_LINK_PREFIX} dev ${slot.hostVeth}`,
        `link set ${slot.hostVeth} up`,
      ]);
      await this.ipBatch(slot.netnsName, [
        'link set lo up',
        `addr add ${hostAddress}/${SLOT_LINK_PREFIX} dev ${SLOT_UPLINK_NAME}`,
        `link set ${SLOT_UPLINK_NAME} up`,
        `route add default via ${hostSideIp} dev ${SLOT_UPLINK_NAME}`,
        ...tapSetupCommands('missing'),
      ]);
      // The slot routes IPv4 only; without IPv6 on its links the guest has no link-local peer to talk to either.
      await this.inNetns(slot.netnsName, 'sysctl', [
        '-q',
        '-w',
        'net.ipv4.ip_forward=1',
        'net.ipv6.conf.all.disable_ipv6=1',
        'net.ipv6.conf.default.disable_ipv6=1',
      ]);
      await this.nft(slot.netnsName, slotRuleset({ hostSideIp, hostAddress }, this.options.pool, this.egressFloor()));
      return slot;
    } catch (err) {
      await this.destroy([index]).catch((cleanupErr: unknown) =>
        this.logger.error(`cleanup of half-built slot ${index} failed: ${String(cleanupErr)}`),
      );
      throw err;
    }
  }

  /**
   * Returns a used slot to the state `create` leaves it in: a fresh tap (recreated if the VMM left something else
   * named tap0), no learned neighbours, the base rule set (dropping any per-sandbox egress policy) and, when the
   * conntrack tool exists, no connection-tracking state from the previous sandbox.
   */
  async reset(slot: NetworkSlot): Promise<void> {
    const { hostSideIp, hostAddress } = slotAddresses(this.options.pool, slot.index);
    const tapState = await this.tapState(slot.netnsName);
    await this.ipBatch(slot.netnsName, [`neigh flush dev ${SLOT_UPLINK_NAME}`, ...tapSetupCommands(tapState)]);
    await this.nft(slot.netnsName, slotRuleset({ hostSideIp, hostAddress }, this.options.pool, this.egressFloor()));
    await this.setProxied({ hostAddress }, false);
    if (await this.hasConntrack()) {
      // Conntrack tables are per namespace, so flushing the slot's namespace touches no other slot; on the host only
      // flows from or to this slot's address are deleted. Exit code 1 means "no matching entries".
      await this.inNetns(slot.netnsName, 'conntrack', ['-F'], { acceptExitCodes: [1] });
      await this.run('conntrack', ['-D', '-s', hostAddress], { acceptExitCodes: [1] });
      await this.run('conntrack', ['-D', '-d', hostAddress], { acceptExitCodes: [1] });
    }
  }

  /**
   * Replaces the slot's per-sandbox policy (an empty policy allows everything above the floor). The slot's rules
   * change atomically; the host's redirect of its web traffic to the egress proxy changes in a second transaction,
   * ordered so that the slot never accepts web traffic for the proxy while the host would not redirect it.
   */
  async applyEgressPolicy(slot: NetworkSlot, policy: AppliedEgressPolicy): Promise<void> {
    const proxied = policy.allowDomains.length > 0;
    if (proxied) await this.setProxied(slot, true);
    await this.nft(slot.netnsName, egressPolicyRuleset(policy));
    if (!proxied) await this.setProxied(slot, false);
  }

  /** Puts the slot in (or takes it out of) the host's set of slots whose web traffic goes to the egress proxy. */
  async setProxied(slot: Pick<NetworkSlot, 'hostAddress'>, proxied: boolean): Promise<void> {
    await this.nft(null, proxiedSlotRuleset(this.options.namePrefix, slot.hostAddress, proxied));
  }

  /** Checks an existing slot without changing it; used before adopting a slot a live sandbox claims. */
  async inspect(index: number): Promise<SlotInspection> {
    const slot = this.describe(index);
    const problems: string[] = [];
    const existing = await this.listExisting();
    if (!existing.namespaces.has(index)) return { problems: [`namespace ${slot.netnsName} does not exist`] };
    if (!existing.hostVeths.has(index)) problems.push(`host veth ${slot.hostVeth} does not exist`);
    // Only a missing tap0 disqualifies: whatever the sandbox's VMM attached to is what its guest is using now.
    if ((await this.tapState(slot.netnsName)) === 'missing') problems.push(`${TAP_NAME} is missing`);
    const uplink = await this.ip(['-n', slot.netnsName, '-j', 'link', 'show', 'dev', SLOT_UPLINK_NAME], {
      acceptExitCodes: [1],
    });
    if (uplink.exitCode !== 0) problems.push(`${SLOT_UPLINK_NAME} is missing in ${slot.netnsName}`);
    return { problems };
  }

  /**
   * Re-applies an adopted slot's rule table with its sandbox's policy, in one transaction (the sets are never seen
   * empty), so a restarted agent's floor (host networks, open ranges, resolvers) holds for old slots too. Leaves the
   * tap (a VM is attached) alone; established flows keep their NAT bindings across the table's replacement.
   */
  async applySlotRules(index: number, policy: AppliedEgressPolicy): Promise<void> {
    const slot = this.describe(index);
    const listed = await this.inNetns(slot.netnsName, 'nft', ['list', 'table', 'inet', SLOT_NFT_TABLE], {
      acceptExitCodes: [1],
    });
    if (listed.exitCode !== 0) this.logger.warn(`slot ${index}: rule table missing, re-applying`);
    const addresses = slotAddresses(this.options.pool, index);
    await this.nft(slot.netnsName, slotRuleset(addresses, this.options.pool, this.egressFloor(), policy));
  }

  /**
   * Removes slots' namespaces and host veths (and with them the netns-side veth ends, taps and rule tables). The veth
   * is deleted explicitly because namespace teardown is asynchronous in the kernel and the host end would otherwise
   * linger briefly. Missing objects are not an error.
   */
  async destroy(indexes: readonly number[]): Promise<void> {
    if (indexes.length === 0) return;
    const existing = await this.listExisting();
    const lines: string[] = [];
    for (const index of indexes) {
      if (existing.hostVeths.has(index)) lines.push(`link del ${this.hostVethName(index)}`);
      if (existing.namespaces.has(index)) lines.push(`netns del ${this.netnsName(index)}`);
    }
    // -force: one failing line must not leave the remaining slots in place; ip still exits non-zero afterwards.
    if (lines.length > 0) await this.ipBatch(null, lines, ['-force']);
  }

  private async tapState(netnsName: string): Promise<TapState> {
    const res = await this.ip(['-n', netnsName, '-d', '-j', 'link', 'show', 'dev', TAP_NAME], { acceptExitCodes: [1] });
    if (res.exitCode !== 0) return 'missing';
    const [link] = JSON.parse(res.stdout || '[]') as IpLink[];
    return link?.linkinfo?.info_kind === 'tun' && link.linkinfo.info_data?.type === 'tap' ? 'tap' : 'other';
  }

  private hasConntrack(): Promise<boolean> {
    this.conntrackAvailable ??= hostToolAvailable('conntrack').then((found) => {
      if (!found) this.logger.log('conntrack tool not found: released slots keep stale conntrack entries until they expire');
      return found;
    });
    return this.conntrackAvailable;
  }

  private ip(args: string[], options: HostCommandOptions = {}) {
    return this.run('ip', args, options);
  }

  /** One `ip` process for many commands. */
  private ipBatch(netnsName: string | null, lines: string[], flags: string[] = []) {
    const args = [...(netnsName ? ['-n', netnsName] : []), ...flags, '-batch', '-'];
    return this.run('ip', args, { input: lines.join('\n') + '\n' });
  }

  private nft(netnsName: string | null, ruleset: string) {
    return netnsName
      ? this.inNetns(netnsName, 'nft', ['-f', '-'], { input: ruleset })
      : this.run('nft', ['-f', '-'], { input: ruleset });
  }

  private inNetns(netnsName: string, file: string, args: string[], options: HostCommandOptions = {}) {
    return this.run('ip', ['netns', 'exec', netnsName, file, ...args], options);
  }

  private run(file: string, args: string[], options: HostCommandOptions = {}) {
    return runHostCommand(file, args, { timeoutMs: this.options.commandTimeoutMs, ...options });
  }
}

/** `other`: something that is not a tap took the name tap0 (e.g. a VMM or test replaced it). */
type TapState = 'tap' | 'missing' | 'other';

/**
 * Brings tap0 to its pristine state from whatever state it is in: an existing tap is taken down and stripped,
 * anything else named tap0 is replaced by a new persistent tap.
 */
function tapSetupCommands(state: TapState): string[] {
  const prepare: Record<TapState, string[]> = {
    tap: [`link set ${TAP_NAME} down`, `addr flush dev ${TAP_NAME}`],
    missing: [`tuntap add dev ${TAP_NAME} mode tap`],
    other: [`link del ${TAP_NAME}`, `tuntap add dev ${TAP_NAME} mode tap`],
  };
  return [
    ...prepare[state],
    `link set ${TAP_NAME} address ${TAP_MAC}`,
    `addr add ${GATEWAY_IP}/${PREFIX} dev ${TAP_NAME}`,
    `link set ${TAP_NAME} up`,
    `neigh replace ${GUEST_IP} lladdr ${GUEST_MAC} dev ${TAP_NAME} nud permanent`,
  ];
}
