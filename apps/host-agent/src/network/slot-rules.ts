import { GATEWAY_IP, GUEST_IP, SLOT_NFT_TABLE, SLOT_UPLINK_NAME, TAP_NAME } from './network.constants';
import { CLOSED_EGRESS_POLICY, type AppliedEgressPolicy } from './egress-policy';
import type { PlatformFloor } from './platform-floor';
import type { SlotAddresses, SlotPool } from './slot-addressing';

/**
 * nftables rulesets, rendered as `nft -f` input. Each one replaces its whole table in a single transaction
 * (`add` + `delete` + define), so applying is atomic and idempotent, and removal is exact: the agent owns the tables
 * outright and never edits chains it did not create.
 *
 * Two layers, so a mistake in one does not open a sandbox up:
 *  - inside each slot namespace, table `inet kiln`: DNAT hostAddress -> guest, SNAT both ways, and the guest's egress
 *    filter (chain `egress`): other slots, DNS to the platform's resolvers only, the platform floor, then the
 *    per-sandbox policy (web traffic handed to the egress proxy when it has domain rules, then the allow and deny
 *    sets);
 *  - on the host, table `inet <prefix>`: traffic arriving from slot veths may not reach host services (but for the
 *    egress proxy's redirect) or other slots, nor anything the host would forward after a DNAT of its own (published
 *    container ports); nothing but replies may enter a slot through the host; slot traffic leaving is masqueraded.
 */

/** TCP ports whose connections carry a name the egress proxy can read: HTTP's Host header and TLS's SNI. */
export const PROXIED_PORTS: readonly number[] = [80, 443];
/** Host set of slot addresses (hostAddress) whose web traffic the host redirects to the egress proxy. */
export const PROXIED_SLOTS_SET = 'proxied_slots';
export const EGRESS_ALLOW_SET = 'allow_out';
export const EGRESS_DENY_SET = 'deny_out';
/** Slot chain holding the "web traffic goes to the egress proxy" rule of a policy with domain rules. */
export const WEB_VIA_PROXY_CHAIN = 'web_via_proxy';

const REJECT = 'counter reject with icmpx type admin-prohibited';

export interface HostRulesetOptions {
  /** 0: no egress proxy, no redirect (and no slot is ever in the proxied set). */
  egressProxyPort: number;
  /** Slot addresses whose web traffic goes to the proxy, as of this (re)creation of the table. */
  proxiedSlotAddresses: readonly string[];
}

export function hostRuleset(namePrefix: string, pool: SlotPool, options: HostRulesetOptions): string {
  const veths = `"${namePrefix}-v*"`;
  const ports = `{ ${PROXIED_PORTS.join(', ')} }`;
  const port = options.egressProxyPort;
  const elements = options.proxiedSlotAddresses.length > 0 ? ` elements = { ${options.proxiedSlotAddresses.join(', ')} };` : '';
  // The redirect runs before other dstnat chains (Docker's, kube-proxy's): the first NAT binding of a flow wins.
  const redirect = port > 0 ? `    iifname ${veths} ip saddr @${PROXIED_SLOTS_SET} tcp dport ${ports} counter redirect to :${port}\n` : '';
  const proxyInput =
    port > 0
      ? `    iifname ${veths} ip saddr @${PROXIED_SLOTS_SET} ct status dnat tcp dport ${port} ct original proto-dst ${ports} accept\n`
      : '';
  return `add table inet ${namePrefix}
delete table inet ${namePrefix}
table inet ${namePrefix} {
  set ${PROXIED_SLOTS_SET} {
    type ipv4_addr;${elements}
  }
  chain prerouting {
    type nat hook prerouting priority dstnat - 10; policy accept;
${redirect}  }
  chain input {
    type filter hook input priority filter - 10; policy accept;
    iifname ${veths} ct state established,related accept
${proxyInput}    iifname ${veths} ${REJECT}
  }
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    iifname ${veths} oifname ${veths} ${REJECT}
    oifname ${veths} ct state established,related accept
    oifname ${veths} counter drop
    iifname ${veths} meta nfproto ipv6 counter drop
    iifname ${veths} ip daddr ${pool.cidr} ${REJECT}
    iifname ${veths} ct status dnat counter drop
    iifname ${veths} ip saddr @${PROXIED_SLOTS_SET} tcp dport ${ports} ${REJECT}
    iifname ${veths} jump egress
  }
  chain egress {
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname != ${veths} ip saddr ${pool.cidr} masquerade
  }
}
`;
}

export function removeHostRuleset(namePrefix: string): string {
  return `add table inet ${namePrefix}\ndelete table inet ${namePrefix}\n`;
}

/**
 * Adds or removes one slot from the host's proxied set. Adding an element that exists is a no-op; deleting one that
 * does not is an error, so removal adds it first (one transaction either way).
 */
export function proxiedSlotRuleset(namePrefix: string, hostAddress: string, proxied: boolean): string {
  const add = `add element inet ${namePrefix} ${PROXIED_SLOTS_SET} { ${hostAddress} }\n`;
  return proxied ? add : `${add}delete element inet ${namePrefix} ${PROXIED_SLOTS_SET} { ${hostAddress} }\n`;
}

export interface SlotEgressFloor {
  floor: PlatformFloor;
  /** IPv4 DNS resolvers the guest may query (port 53, udp and tcp). */
  dnsResolvers: readonly string[];
}

/** The slot's whole table, with `policy` (default: closed, until a sandbox's own is applied) filled in by the same transaction. */
export function slotRuleset(
  addresses: SlotAddresses,
  pool: SlotPool,
  egress: SlotEgressFloor,
  policy: AppliedEgressPolicy = CLOSED_EGRESS_POLICY,
): string {
  const uplink = `"${SLOT_UPLINK_NAME}"`;
  const tap = `"${TAP_NAME}"`;
  const { floor, dnsResolvers } = egress;
  const elements = (values: readonly string[]) => (values.length > 0 ? ` elements = { ${values.join(', ')} };` : '');
  const intervalSet = (name: string, values: readonly string[]) =>
    `  set ${name} {\n    type ipv4_addr; flags interval; auto-merge;${elements(values)}\n  }\n`;
  return `add table inet ${SLOT_NFT_TABLE}
delete table inet ${SLOT_NFT_TABLE}
table inet ${SLOT_NFT_TABLE} {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname ${uplink} ip daddr ${addresses.hostAddress} dnat ip to ${GUEST_IP}
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname ${tap} ip daddr ${GUEST_IP} ct status dnat snat ip to ${GATEWAY_IP}
    oifname ${uplink} ip saddr ${GUEST_IP} snat ip to ${addresses.hostAddress}
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname ${uplink} oifname ${tap} ip daddr ${GUEST_IP} ct status dnat accept
    iifname ${tap} oifname ${uplink} ip saddr ${GUEST_IP} meta nfproto ipv4 jump egress
    ${REJECT}
  }
${intervalSet('platform_floor', floor.closed.map((b) => b.cidr))}${intervalSet('floor_open', floor.open.map((b) => b.cidr))}${intervalSet('dns_resolvers', dnsResolvers)}${intervalSet(EGRESS_ALLOW_SET, [])}${intervalSet(EGRESS_DENY_SET, [])}  chain ${WEB_VIA_PROXY_CHAIN} {
  }
  chain egress {
    ip daddr ${floor.slotPool.cidr} ${REJECT}
    ip daddr @dns_resolvers meta l4proto { tcp, udp } th dport 53 accept
    meta l4proto { tcp, udp } th dport 53 ${REJECT}
    ip daddr @platform_floor ip daddr != @floor_open ${REJECT}
    jump ${WEB_VIA_PROXY_CHAIN}
    ip daddr @${EGRESS_ALLOW_SET} accept
    ip daddr @${EGRESS_DENY_SET} ${REJECT}
    accept
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname ${tap} ct state established,related accept
    iifname ${tap} icmp type echo-request accept
    iifname ${tap} ${REJECT}
  }
}
${egressPolicyRuleset(policy)}`;
}

/**
 * Replaces a slot's per-sandbox policy in one transaction: the allow and deny sets (allowed blocks win over denied
 * ones) and, when the policy has domain rules, acceptance of all web traffic, which the host redirects to the egress
 * proxy (the proxy then applies names and addresses). Nothing here can open what the chain rejects before it.
 */
export function egressPolicyRuleset(policy: AppliedEgressPolicy): string {
  const table = `inet ${SLOT_NFT_TABLE}`;
  const fill = (set: string, cidrs: readonly string[]) =>
    `flush set ${table} ${set}\n` + (cidrs.length > 0 ? `add element ${table} ${set} { ${cidrs.join(', ')} }\n` : '');
  const web =
    `flush chain ${table} ${WEB_VIA_PROXY_CHAIN}\n` +
    (policy.allowDomains.length > 0 ? `add rule ${table} ${WEB_VIA_PROXY_CHAIN} tcp dport { ${PROXIED_PORTS.join(', ')} } accept\n` : '');
  return fill(EGRESS_ALLOW_SET, policy.allowCidrs) + fill(EGRESS_DENY_SET, policy.denyCidrs) + web;
}
